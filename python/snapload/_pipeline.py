"""Driving the Rust read pipeline with a copy engine.

The Rust side fills a bounded ring of host buffers from reader threads; this loop hands each
filled slot to a copy engine (CUDA async copies in ``snapload.cuda``, or ``HostCopyEngine`` in
tests and on machines without a GPU) and gives the slot back only after the engine reports that
its copy completed. One loop serves both, so every byte path except the final copy is exercised
on the CPU.

Rings are leased from a process-wide ``RingPool``: each restore has a ring of its own for its
whole life (reads, copies and the drain after an error), so concurrent restores never share a
buffer, and pinned memory stays within the pool's budget.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from snapload import _native

if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_BYTES = 32 << 20
DEFAULT_SLOTS = 8
READ_MODES = ("auto", "mmap", "direct", "buffered")


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class CopyEngine(Protocol):
    """Moves a filled ring slot to the arena. ``copy`` may return before the copy is done."""

    def copy(self, slot: int, host_address: int, dst_offset: int, length: int) -> None: ...

    def completed(self) -> list[int]:
        """Slots whose copies have finished, oldest first; never blocks."""
        ...

    def wait_oldest(self) -> int:
        """Block until the oldest copy in flight finishes; return its slot."""
        ...

    def drain(self) -> list[int]:
        """Block until every copy in flight finishes; return their slots."""
        ...


@dataclass
class PipelineStats:
    chunks: int = 0
    bytes: int = 0
    mmap_bytes: int = 0
    direct_bytes: int = 0
    buffered_bytes: int = 0
    remote_bytes: int = 0
    # Seconds per phase of the drive loop, from the consumer's side (see ``drive``), plus the
    # callers' own phases (ring pinning, arena allocation) where they time them.
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def read_paths(self) -> dict[str, int]:
        """Bytes per read path that actually ran (page cache, direct I/O, mapping, object store)."""
        paths = {
            "buffered": self.buffered_bytes,
            "direct": self.direct_bytes,
            "mmap": self.mmap_bytes,
            "remote": self.remote_bytes,
        }
        return {k: v for k, v in paths.items() if v}


def drive(
    pipeline: _native.Pipeline, ring: _native.Ring, engine: CopyEngine, *, lease: PooledRing | None = None
) -> PipelineStats:
    """Feed every filled slot to ``engine``; release slots as their copies complete.

    On any error the readers are cancelled (and joined) and every copy in flight is waited for
    before the error propagates, so the ring can serve the next restore. If even that wait fails
    (a lost device), copies may still read the ring: ``lease`` is then quarantined, never reused.

    The phases it reports (seconds): ``first_byte`` (start until the first filled slot),
    ``wait_readers`` (blocked on readers after that), ``copy_issue`` (inside ``engine.copy``),
    ``wait_copies`` (polling and waiting for copies while the ring was full), ``tail`` (the
    final drain), ``finish`` (joining readers, checksums)."""
    addresses = ring.addresses
    in_flight = 0
    clock = time.perf_counter
    start = clock()
    first_byte = wait_readers = copy_issue = wait_copies = 0.0
    try:
        while True:
            t0 = clock()
            for slot in engine.completed():
                pipeline.release(slot)
                in_flight -= 1
            if in_flight == ring.slots:
                # Readers have no slot to fill: wait for the oldest copy rather than spin.
                pipeline.release(engine.wait_oldest())
                in_flight -= 1
            t1 = clock()
            wait_copies += t1 - t0
            filled = pipeline.next_filled()
            t2 = clock()
            if first_byte == 0.0:
                first_byte = t2 - start
            else:
                wait_readers += t2 - t1
            if filled is None:
                break
            slot, dst_offset, length = filled
            engine.copy(slot, addresses[slot], dst_offset, length)
            in_flight += 1
            copy_issue += clock() - t2
        t3 = clock()
        for slot in engine.drain():
            pipeline.release(slot)
        t4 = clock()
        counts = pipeline.finish()
        phases = {
            "first_byte": first_byte,
            "wait_readers": wait_readers,
            "copy_issue": copy_issue,
            "wait_copies": wait_copies,
            "tail": t4 - t3,
            "finish": clock() - t4,
        }
        return PipelineStats(
            chunks=counts["chunks"],
            bytes=counts["bytes"],
            mmap_bytes=counts["mmap_bytes"],
            direct_bytes=counts["direct_bytes"],
            buffered_bytes=counts["buffered_bytes"],
            remote_bytes=counts.get("remote_bytes", 0),
            phases=phases,
        )
    except BaseException:
        pipeline.cancel()
        try:
            engine.drain()  # no copy may still read a slot once the ring is reused
        except BaseException:
            if lease is not None:
                lease.quarantine()
        raise


class HostCopyEngine:
    """A host sink: copies into host memory at ``base_address``. ``lag`` holds each slot back
    until that many later copies were issued, as a slow device would, so ring reuse and release
    ordering get exercised."""

    def __init__(self, base_address: int, size: int, *, lag: int = 0) -> None:
        self.base_address = base_address
        self.size = size
        self.lag = lag
        self._in_flight: collections.deque[int] = collections.deque()
        self.copies = 0

    def copy(self, slot: int, host_address: int, dst_offset: int, length: int) -> None:
        if dst_offset < 0 or dst_offset + length > self.size:
            raise ValueError(f"copy of {length} bytes at {dst_offset} overruns the {self.size}-byte arena")
        ctypes.memmove(self.base_address + dst_offset, host_address, length)
        self._in_flight.append(slot)
        self.copies += 1

    def completed(self) -> list[int]:
        done = []
        while len(self._in_flight) > self.lag:
            done.append(self._in_flight.popleft())
        return done

    def wait_oldest(self) -> int:
        return self._in_flight.popleft()

    def drain(self) -> list[int]:
        done = list(self._in_flight)
        self._in_flight.clear()
        return done


DEFAULT_RING_BUDGET = 512 << 20


@dataclass(eq=False)
class PooledRing:
    """A ring and what the device side did to it (pinning), leased to one restore at a time."""

    ring: _native.Ring
    pinned: bool = False
    # Set by whoever pinned the ring: undoes the pinning before the ring's memory is freed.
    unpin: Callable[[], None] | None = None
    quarantined: bool = False

    @property
    def nbytes(self) -> int:
        return self.ring.slots * self.ring.slot_size

    def quarantine(self) -> None:
        """A device may still read this ring: never lease it again, never free it."""
        self.quarantined = True


class RingPool:
    """The process's rings. A restore leases one for its whole life; rings are reused (pinning
    memory costs far more than reading into it) and the total stays within ``budget`` bytes, so
    a restore that would exceed it waits for another to finish. One ring larger than the budget
    is still allowed when it is the only one."""

    def __init__(self, budget: int = DEFAULT_RING_BUDGET) -> None:
        self.budget = budget
        self._cond = threading.Condition()
        self._idle: list[PooledRing] = []
        self._bytes = 0  # rings in circulation, leased or idle
        # Kept alive but out of the budget: a device may still read them, and a lost device must
        # not leave every later restore waiting for memory that never comes back.
        self._quarantined: list[PooledRing] = []

    @property
    def allocated_bytes(self) -> int:
        with self._cond:
            return self._bytes

    @contextlib.contextmanager
    def lease(self, slots: int, slot_bytes: int) -> Iterator[PooledRing]:
        pooled = self._take(slots, slot_bytes)
        try:
            yield pooled
        finally:
            with self._cond:
                if pooled.quarantined or pooled.ring.leased:
                    # A pipeline that still holds the ring (never cancelled) or a device that may
                    # still read it: keep the memory alive and out of circulation.
                    self._quarantined.append(pooled)
                    self._bytes -= pooled.nbytes
                else:
                    self._idle.append(pooled)
                self._cond.notify_all()

    def _take(self, slots: int, slot_bytes: int) -> PooledRing:
        need = slots * slot_bytes
        with self._cond:
            while True:
                match = next((r for r in self._idle if (r.ring.slots, r.ring.slot_size) == (slots, slot_bytes)), None)
                if match is not None:
                    self._idle.remove(match)
                    return match
                if self._bytes + need > self.budget and self._idle:
                    self._retire(self._idle.pop(0))  # an idle ring of another geometry makes room
                    continue
                if self._bytes + need <= self.budget or self._bytes == 0:
                    self._bytes += need
                    break
                self._cond.wait()  # every ring is in use by another restore
        try:
            return PooledRing(_native.Ring(slots, slot_bytes))
        except BaseException:
            with self._cond:
                self._bytes -= need
                self._cond.notify_all()
            raise

    def _retire(self, pooled: PooledRing) -> None:
        if pooled.unpin is not None:
            pooled.unpin()
        self._bytes -= pooled.nbytes


def _default_budget() -> int:
    value = os.environ.get("SNAPLOAD_RING_BUDGET_BYTES")
    if value is None:
        return DEFAULT_RING_BUDGET
    try:
        budget = int(value)
    except ValueError:
        raise ValueError(f"SNAPLOAD_RING_BUDGET_BYTES={value!r} is not a number of bytes") from None
    if budget <= 0:
        raise ValueError(f"SNAPLOAD_RING_BUDGET_BYTES={value!r} must be positive")
    return budget


_POOL: RingPool | None = None
_POOL_LOCK = threading.Lock()


def ring_pool() -> RingPool:
    """The process-wide pool (budget: ``SNAPLOAD_RING_BUDGET_BYTES``, default 512 MiB)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = RingPool(_default_budget())
        return _POOL


def check_options(chunk_bytes: int, slots: int, mode: str) -> None:
    if chunk_bytes <= 0 or chunk_bytes % 4096:
        raise ValueError(f"chunk_bytes={chunk_bytes} must be a positive multiple of 4096")
    if slots < 1:
        raise ValueError(f"slots={slots} must be at least 1")
    if mode not in READ_MODES:
        raise ValueError(f"read_mode={mode!r} must be one of {READ_MODES}")


def restore_to_host(
    path: str | os.PathLike[str],
    *,
    threads: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    slots: int = DEFAULT_SLOTS,
    read_mode: str = "auto",
    verify: bool = False,
    lag: int = 0,
) -> tuple[dict[str, torch.Tensor], PipelineStats]:
    """The device pipeline with a host sink: the arena is a CPU tensor. For tests, and to
    measure the read side on machines without a GPU."""
    import torch

    from snapload._info import tensor_table
    from snapload._views import views_of

    check_options(chunk_bytes, slots, read_mode)
    snap = _native.Snapshot(os.fspath(path))
    with ring_pool().lease(slots, chunk_bytes) as lease:
        pipeline = _native.Pipeline(snap, lease.ring, threads or default_threads(), read_mode, verify)
        try:
            arena = torch.empty(pipeline.arena_size, dtype=torch.uint8)
            engine = HostCopyEngine(arena.data_ptr(), arena.numel(), lag=lag)
            stats = drive(pipeline, lease.ring, engine, lease=lease)
        except BaseException:
            pipeline.cancel()  # joins the readers: the ring goes back to the pool clean
            raise
    return views_of(arena, tensor_table(snap), pipeline.dst_offsets, path=path), stats
