"""Driving the Rust read pipeline with a copy engine.

The Rust side fills a bounded ring of host buffers from reader threads; this loop hands each
filled slot to a copy engine (CUDA async copies in ``snapload.cuda``, or ``HostCopyEngine`` in
tests and on machines without a GPU) and gives the slot back only after the engine reports that
its copy completed. One loop serves both, so every byte path except the final copy is exercised
on the CPU.
"""

from __future__ import annotations

import collections
import ctypes
import os
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
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def read_paths(self) -> dict[str, int]:
        """Bytes per read path that actually ran (page cache, direct I/O, mapping)."""
        paths = {"buffered": self.buffered_bytes, "direct": self.direct_bytes, "mmap": self.mmap_bytes}
        return {k: v for k, v in paths.items() if v}


def drive(pipeline: _native.Pipeline, ring: _native.Ring, engine: CopyEngine) -> PipelineStats:
    """Feed every filled slot to ``engine``; release slots as their copies complete."""
    addresses = ring.addresses
    in_flight = 0
    try:
        while True:
            for slot in engine.completed():
                pipeline.release(slot)
                in_flight -= 1
            if in_flight == ring.slots:
                # Readers have no slot to fill: wait for the oldest copy rather than spin.
                pipeline.release(engine.wait_oldest())
                in_flight -= 1
            filled = pipeline.next_filled()
            if filled is None:
                break
            slot, dst_offset, length = filled
            engine.copy(slot, addresses[slot], dst_offset, length)
            in_flight += 1
        for slot in engine.drain():
            pipeline.release(slot)
        counts = pipeline.finish()
        return PipelineStats(
            chunks=counts["chunks"],
            bytes=counts["bytes"],
            mmap_bytes=counts["mmap_bytes"],
            direct_bytes=counts["direct_bytes"],
            buffered_bytes=counts["buffered_bytes"],
        )
    except BaseException:
        pipeline.cancel()
        try:
            engine.drain()  # no copy may still read a slot once the ring is reused
        finally:
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


_RINGS: dict[tuple[int, int], _native.Ring] = {}


def shared_ring(slots: int, slot_bytes: int) -> _native.Ring:
    """One ring per geometry per process: its (pinned) buffers are reused by every restore,
    since page-locking memory costs far more than reading into it."""
    key = (slots, slot_bytes)
    ring = _RINGS.get(key)
    if ring is None:
        ring = _RINGS[key] = _native.Ring(slots, slot_bytes)
    return ring


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

    from snapload._restore import tensor_table, views_of

    check_options(chunk_bytes, slots, read_mode)
    snap = _native.Snapshot(os.fspath(path))
    ring = shared_ring(slots, chunk_bytes)
    pipeline = _native.Pipeline(snap, ring, threads or default_threads(), read_mode, verify)
    arena = torch.empty(pipeline.arena_size, dtype=torch.uint8)
    stats = drive(pipeline, ring, HostCopyEngine(arena.data_ptr(), arena.numel(), lag=lag))
    return views_of(arena, tensor_table(snap), pipeline.dst_offsets, path=path), stats
