"""The device-restore pipeline on the CPU: the Rust reader threads, the bounded ring, the drive
loop and the CUDA copy engine (against a fake driver), with a host sink standing in for the GPU.
Only the final host-to-device copy is left to tests/test_cuda.py."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any

import pytest
import torch

import snapload
from snapload import _native
from snapload._info import tensor_table
from snapload._pipeline import HostCopyEngine, PooledRing, RingPool, drive, restore_to_host, ring_pool
from snapload._views import views_of
from snapload.cuda import CudaCopyEngine, CudaError, pin_ring

from fake_cuda import FakeDriver

POISON = 0xCD

MODES = ["auto", "mmap", "direct", "buffered"]


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {f"layer{i}.w": torch.randn(100 + 37 * i, 129, generator=g).to(torch.bfloat16) for i in range(12)}
    sd["bias"] = torch.randint(-5, 5, (7,), dtype=torch.int32, generator=g)
    sd["empty"] = torch.empty(0, 4)
    sd["scalar"] = torch.tensor(1.25)
    sd["tied"] = sd["layer3.w"]
    return sd


@pytest.fixture(scope="module")
def snap_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("pipe") / "model.snap")
    snapload.snapshot(_state(), path)
    return path


def _assert_same(restored: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert restored.keys() == expected.keys()
    for k, v in expected.items():
        assert restored[k].dtype == v.dtype and restored[k].shape == v.shape, k
        assert torch.equal(restored[k], v), k
    assert restored["tied"] is restored["layer3.w"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lag", [0, 3])
def test_every_read_mode_restores_exact_bytes(snap_path: str, mode: str, lag: int) -> None:
    # Chunks far smaller than tensors and a 4-slot ring: tensors span chunks, slots are reused
    # dozens of times, and with lag the engine holds slots back like a busy device would.
    tensors, stats = restore_to_host(snap_path, chunk_bytes=16384, slots=4, threads=3, read_mode=mode, verify=True, lag=lag)
    _assert_same(tensors, _state())
    info = snapload.open(snap_path)
    assert stats.bytes >= info.data_bytes
    assert stats.chunks > 4 * 4, "the ring must have been reused"
    expected_path = {"auto": None, "mmap": "mmap", "direct": "direct", "buffered": "buffered"}[mode]
    if expected_path:
        assert set(stats.read_paths) == {expected_path}


def _direct_io_refusal(path: str) -> str | None:
    """Why this file system refuses an aligned O_DIRECT read of ``path``, or None if it takes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        return f"open(O_DIRECT) fails here: {e}"
    try:
        buf = ctypes.create_string_buffer(8192)
        aligned = (ctypes.addressof(buf) + 4095) & ~4095
        view = (ctypes.c_char * 4096).from_address(aligned)
        os.preadv(fd, [memoryview(view).cast("B")], 0)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return f"the file system takes O_DIRECT at open but refuses aligned reads: {e}"
        raise
    finally:
        os.close(fd)
    return None


def test_auto_mode_reads_cold_chunks_direct_and_cached_ones_buffered(snap_path: str) -> None:
    refusal = _direct_io_refusal(snap_path)
    if refusal:
        pytest.skip(refusal)
    snapload.evict(snap_path)
    if snapload.residency(snap_path).resident_bytes:
        pytest.skip("this file system keeps pages resident after fadvise(DONTNEED)")
    _, cold = restore_to_host(snap_path, chunk_bytes=1 << 20, slots=2, read_mode="auto")
    # Every chunk was cold, and this file system takes direct I/O: all of them went direct.
    assert cold.direct_bytes == cold.bytes > 0, cold.read_paths
    with open(snap_path, "rb") as f:
        f.read()
    assert snapload.residency(snap_path).fraction == 1.0
    _, warm = restore_to_host(snap_path, chunk_bytes=1 << 20, slots=2, read_mode="auto")
    assert set(warm.read_paths) == {"buffered"}


def test_single_slot_single_thread_still_completes(snap_path: str) -> None:
    tensors, stats = restore_to_host(snap_path, chunk_bytes=4096, slots=1, threads=1, verify=True)
    _assert_same(tensors, _state())


def test_verify_in_pipeline_names_the_corrupted_tensor(tmp_path) -> None:
    path = str(tmp_path / "bad.snap")
    snapload.snapshot(_state(), path)
    victim = next(t for t in snapload.open(path).tensors if t.name == "layer7.w")
    with open(path, "r+b") as f:
        f.seek(victim.offset + victim.length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(snapload.ChecksumMismatchError, match="layer7.w") as err:
        restore_to_host(path, chunk_bytes=8192, slots=3, verify=True)
    assert path in str(err.value)
    restore_to_host(path, chunk_bytes=8192, slots=3, verify=False)  # without verify it loads


def test_file_truncated_after_open_is_an_error_not_a_crash(tmp_path) -> None:
    path = str(tmp_path / "t.snap")
    snapload.snapshot(_state(), path)
    snap = _native.Snapshot(path)
    os.truncate(path, snap.file_size - 5000)
    ring = _native.Ring(2, 8192)
    with pytest.raises(snapload.TruncatedFileError, match="t.snap"):
        _native.Pipeline(snap, ring, 2, "buffered", False)


def test_cancel_stops_readers_and_reports_cancelled(snap_path: str) -> None:
    snap = _native.Snapshot(snap_path)
    ring = _native.Ring(2, 4096)
    pipe = _native.Pipeline(snap, ring, 2, "buffered", False)
    assert pipe.next_filled() is not None
    pipe.cancel()
    with pytest.raises(snapload.CancelledError):
        pipe.next_filled()
    with pytest.raises(snapload.CancelledError):
        pipe.finish()


def test_consumer_holding_every_slot_is_told_instead_of_hanging(snap_path: str) -> None:
    snap = _native.Snapshot(snap_path)
    pipe = _native.Pipeline(snap, _native.Ring(2, 4096), 2, "buffered", False)
    held = [pipe.next_filled(), pipe.next_filled()]
    assert all(h is not None for h in held)
    with pytest.raises(ValueError, match="holds every ring slot"):
        pipe.next_filled()
    pipe.release(held[0][0])
    with pytest.raises(ValueError, match="not held"):
        pipe.release(held[0][0])
    with pytest.raises(ValueError, match="out of range"):
        pipe.release(7)
    pipe.cancel()


def test_engine_failure_cancels_pipeline_and_drains_copies(snap_path: str) -> None:
    class Failing(HostCopyEngine):
        def copy(self, slot: int, host: int, dst: int, n: int) -> None:
            if self.copies == 5:
                raise RuntimeError("device lost")
            super().copy(slot, host, dst, n)

    snap = _native.Snapshot(snap_path)
    with ring_pool().lease(3, 8192) as lease:
        pipe = _native.Pipeline(snap, lease.ring, 2, "buffered", False)
        arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
        engine = Failing(arena.data_ptr(), arena.numel(), lag=2)
        with pytest.raises(RuntimeError, match="device lost"):
            drive(pipe, lease.ring, engine, lease=lease)
        assert engine.drain() == []  # drive drained every copy before re-raising
        assert pipe.readers_alive == 0 and not lease.ring.leased, "cancel joined the readers"
    assert not lease.quarantined
    # The pooled ring is usable again by the next restore, at once.
    tensors, _ = restore_to_host(snap_path, chunk_bytes=8192, slots=3)
    _assert_same(tensors, _state())


class PoisonOnRelease:
    """The pipeline, except that a released slot is overwritten with POISON first: a copy that
    still reads the slot after its release (an early release) then takes poison, not data."""

    def __init__(self, pipeline: _native.Pipeline, ring: _native.Ring) -> None:
        self.pipeline, self.ring = pipeline, ring

    def release(self, slot: int) -> None:
        ctypes.memset(self.ring.addresses[slot], POISON, self.ring.slot_size)
        self.pipeline.release(slot)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


def _fake_cuda_restore(path: str, cu: FakeDriver, *, slots: int = 3, chunk: int = 8192, engine_class: type = CudaCopyEngine):
    """CudaCopyEngine's real code against the fake driver, into a CPU "arena"."""
    snap = _native.Snapshot(path)
    with ring_pool().lease(slots, chunk) as lease:
        pinned_before = lease.pinned  # by an earlier test's driver: the pool pins a ring once
        assert pin_ring(cu, lease)
        assert pinned_before or cu.registered >= set(lease.ring.addresses)
        pipe = _native.Pipeline(snap, lease.ring, 2, "auto", True)
        arena = torch.full((pipe.arena_size,), 0xAB, dtype=torch.uint8)  # every byte must be written
        allocating = cu.CUstream(cu.cuStreamCreate(0)[1])
        engine = engine_class(cu, arena.data_ptr(), arena.numel(), slots, streams=2, after_stream=allocating)
        try:
            stats = drive(PoisonOnRelease(pipe, lease.ring), lease.ring, engine, lease=lease)
        finally:
            engine.close()
            cu.cuStreamDestroy(allocating)
    return views_of(arena, tensor_table(snap), pipe.dst_offsets), stats, engine


def test_cuda_copy_engine_against_fake_driver(snap_path: str) -> None:
    cu = FakeDriver(polls_until_ready=3)
    tensors, stats, engine = _fake_cuda_restore(snap_path, cu)
    assert cu.copies == cu.executed == stats.chunks, "every copy ran, at event completion"
    assert not cu.live_events and not cu.live_streams
    _assert_same(tensors, _state())


def test_copy_streams_wait_for_the_allocating_stream_before_copying(snap_path: str) -> None:
    cu = FakeDriver()
    _, _, engine = _fake_cuda_restore(snap_path, cu)
    recorded = [(e, s) for call, e, s in cu.log if call == "record"]
    ready_event, allocating_stream = recorded[0]  # the first event recorded is on the allocating stream
    copy_streams = {s for call, s, _ in cu.log if call == "copy"}
    assert allocating_stream not in copy_streams and len(copy_streams) == 2
    for stream in copy_streams:
        first_copy = next(i for i, (call, s, _) in enumerate(cu.log) if call == "copy" and s == stream)
        waits = [i for i, (call, s, e) in enumerate(cu.log) if call == "wait" and s == stream and e == ready_event]
        assert waits and waits[0] < first_copy, f"stream {stream} copied before waiting on the allocation"


def test_fake_driver_catches_a_slot_released_before_its_copy_completed(snap_path: str) -> None:
    class EarlyRelease(CudaCopyEngine):
        def completed(self) -> list[int]:  # the bug: report slots done without asking the events
            done = list(self._in_flight)
            self._in_flight.clear()
            return done

    tensors, _, _ = _fake_cuda_restore(snap_path, FakeDriver(polls_until_ready=3), engine_class=EarlyRelease)
    wrong = [k for k, v in _state().items() if v.numel() and not torch.equal(tensors[k], v)]
    assert wrong, "an early release must corrupt the result under the fake driver, or it proves nothing"


def test_cuda_copy_engine_error_names_the_call_and_frees_streams_and_events(snap_path: str) -> None:
    cu = FakeDriver(fail_copy_at=4)
    with pytest.raises(CudaError, match="cuMemcpyHtoDAsync failed: CUDA_ERROR_INVALID_VALUE"):
        _fake_cuda_restore(snap_path, cu)
    assert not cu.live_events and not cu.live_streams
    # The ring went back clean (every issued copy was drained) and serves the next restore.
    tensors, _, _ = _fake_cuda_restore(snap_path, FakeDriver())
    _assert_same(tensors, _state())


def test_engine_setup_failure_leaves_no_stream_or_event(snap_path: str) -> None:
    cu = FakeDriver(fail_event_create_at=2)
    with pytest.raises(CudaError, match="cuEventCreate failed"):
        CudaCopyEngine(cu, 0, 1 << 20, slots=3, streams=2, after_stream=0)
    assert not cu.live_events and not cu.live_streams


def test_a_ring_whose_copies_cannot_be_drained_is_never_reused(snap_path: str) -> None:
    pool = RingPool(budget=1 << 20)
    cu = FakeDriver(fail_copy_at=3, fail_synchronize=True)
    snap = _native.Snapshot(snap_path)
    with pool.lease(2, 8192) as lease:
        pipe = _native.Pipeline(snap, lease.ring, 2, "buffered", False)
        arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
        engine = CudaCopyEngine(cu, arena.data_ptr(), arena.numel(), 2)
        with pytest.raises(CudaError):
            drive(pipe, lease.ring, engine, lease=lease)
        engine.close()
    assert lease.quarantined
    with pool.lease(2, 8192) as other:
        assert other is not lease and other.ring is not lease.ring


def _big_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randint(-(2**31), 2**31 - 1, (1 << 20,), dtype=torch.int32, generator=g) for i in range(24)}


@pytest.fixture(scope="module")
def two_snapshots(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, torch.Tensor]]]:
    out = []
    for seed in (1, 2):
        path = str(tmp_path_factory.mktemp("conc") / f"m{seed}.snap")
        state = _big_state(seed)
        snapload.snapshot(state, path)
        out.append((path, state))
    return out


def _run_threads(work: list[Any]) -> None:
    errors: list[BaseException] = []

    def run(fn: Any) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a restore thread hung"
    assert not errors, errors


def test_concurrent_restores_from_threads_are_bit_exact(two_snapshots) -> None:
    # The reproduction from the trust issue: two threads, two snapshots (24 x 4 MiB tensors),
    # six restores each, one ring geometry. Before rings were leased, half came back wrong.
    mismatches: list[str] = []

    def restores(path: str, state: dict[str, torch.Tensor]) -> None:
        for k in range(6):
            tensors, _ = restore_to_host(path, chunk_bytes=1 << 20, slots=4, threads=2, lag=2)
            mismatches.extend(f"{path} #{k} {n}" for n, v in state.items() if not torch.equal(tensors[n], v))

    _run_threads([lambda p=p, s=s: restores(p, s) for p, s in two_snapshots])
    assert not mismatches, mismatches[:5]


def test_concurrent_restores_wait_for_a_ring_within_the_budget(two_snapshots, monkeypatch) -> None:
    # Room for one 4 MiB ring only: four threads take turns instead of sharing buffers.
    pool = RingPool(budget=4 << 20)
    monkeypatch.setattr("snapload._pipeline._POOL", pool)
    results: list[bool] = []

    def restore(path: str, state: dict[str, torch.Tensor]) -> None:
        tensors, _ = restore_to_host(path, chunk_bytes=1 << 20, slots=4, threads=2, lag=1)
        results.append(all(torch.equal(tensors[n], v) for n, v in state.items()))

    _run_threads([lambda p=p, s=s: restore(p, s) for p, s in two_snapshots * 2])
    assert results == [True] * 4
    assert pool.allocated_bytes == 4 << 20, "no second ring beyond the budget"


def test_concurrent_fake_cuda_restores_are_bit_exact(two_snapshots) -> None:
    def restore(path: str, state: dict[str, torch.Tensor]) -> None:
        for _ in range(2):
            tensors, _, _ = _fake_cuda_restore(path, FakeDriver(polls_until_ready=2), slots=3, chunk=1 << 20)
            bad = [n for n, v in state.items() if not torch.equal(tensors[n], v)]
            assert not bad, bad[:3]

    _run_threads([lambda p=p, s=s: restore(p, s) for p, s in two_snapshots])


def test_a_cancelled_restore_followed_at_once_by_another_is_exact(two_snapshots) -> None:
    path, state = two_snapshots[0]

    class Failing(HostCopyEngine):
        def copy(self, slot: int, host: int, dst: int, n: int) -> None:
            if self.copies == 3:
                raise RuntimeError("device lost")
            super().copy(slot, host, dst, n)

    for _ in range(3):
        snap = _native.Snapshot(path)
        with ring_pool().lease(4, 1 << 20) as lease:
            pipe = _native.Pipeline(snap, lease.ring, 4, "buffered", False)
            arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
            with pytest.raises(RuntimeError, match="device lost"):
                drive(pipe, lease.ring, Failing(arena.data_ptr(), arena.numel(), lag=2), lease=lease)
        tensors, _ = restore_to_host(path, chunk_bytes=1 << 20, slots=4, threads=4)
        assert all(torch.equal(tensors[n], v) for n, v in state.items())


def test_ring_pool_retires_an_idle_ring_of_another_geometry_and_unpins_it() -> None:
    pool = RingPool(budget=64 << 10)
    cu = FakeDriver()
    with pool.lease(4, 8192) as first:
        assert pin_ring(cu, first)
        pinned = set(first.ring.addresses)
    assert cu.registered == pinned
    with pool.lease(2, 16384) as second:  # 32 KiB + 32 KiB fits: no retirement
        assert second.ring is not first.ring
    with pool.lease(8, 8192) as third:  # 64 KiB: both idle rings must go, and be unpinned
        assert third.ring.slots == 8
    assert not cu.registered & pinned, "a retired ring is unpinned before it is freed"
    assert pool.allocated_bytes == 64 << 10


def test_a_second_pipeline_on_a_leased_ring_is_refused(snap_path: str) -> None:
    snap = _native.Snapshot(snap_path)
    ring = _native.Ring(2, 8192)
    first = _native.Pipeline(snap, ring, 1, "buffered", False)
    with pytest.raises(ValueError, match="in use by another restore"):
        _native.Pipeline(snap, ring, 1, "buffered", False)
    first.cancel()
    assert first.readers_alive == 0 and not ring.leased
    _native.Pipeline(snap, ring, 1, "buffered", False).cancel()


def test_bad_options_are_rejected(snap_path: str) -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        restore_to_host(snap_path, chunk_bytes=1000)
    with pytest.raises(ValueError, match="read_mode"):
        restore_to_host(snap_path, read_mode="fast")
    with pytest.raises(ValueError, match="slots"):
        restore_to_host(snap_path, slots=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is present")
def test_cuda_restore_without_a_gpu_says_why(snap_path: str) -> None:
    with pytest.raises(snapload.CudaUnavailableError, match="no CUDA device|cuda-python"):
        snapload.restore(snap_path, "cuda")


def test_stats_report_where_the_time_went(snap_path: str) -> None:
    _, stats = restore_to_host(snap_path, chunk_bytes=16384, slots=2, threads=1)
    assert set(stats.phases) == {"first_byte", "wait_readers", "copy_issue", "wait_copies", "tail", "finish"}
    assert all(v >= 0 for v in stats.phases.values())
    assert stats.phases["first_byte"] > 0 and stats.phases["copy_issue"] > 0
