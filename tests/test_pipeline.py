"""The device-restore pipeline on the CPU: the Rust reader threads, the bounded ring, the drive
loop and the CUDA copy engine (against a fake driver), with a host sink standing in for the GPU.
Only the final host-to-device copy is left to tests/test_cuda.py."""

from __future__ import annotations

import os

import pytest
import torch

import snapload
from snapload import _native
from snapload._pipeline import HostCopyEngine, drive, restore_to_host, shared_ring
from snapload._restore import tensor_table, views_of
from snapload.cuda import CudaCopyEngine, CudaError

from fake_cuda import FakeDriver

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


def test_auto_mode_reads_cold_chunks_direct_and_cached_ones_buffered(snap_path: str) -> None:
    snapload.evict(snap_path)
    if snapload.residency(snap_path).resident_bytes:
        pytest.skip("this file system keeps pages resident after fadvise(DONTNEED)")
    _, cold = restore_to_host(snap_path, chunk_bytes=1 << 20, slots=2, read_mode="auto")
    with open(snap_path, "rb") as f:
        f.read()
    assert snapload.residency(snap_path).fraction == 1.0
    _, warm = restore_to_host(snap_path, chunk_bytes=1 << 20, slots=2, read_mode="auto")
    assert set(warm.read_paths) == {"buffered"}
    # Direct I/O is refused by some file systems (tmpfs); then cold chunks fall back to buffered.
    assert cold.direct_bytes > 0 or cold.buffered_bytes == cold.bytes


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
    ring = shared_ring(3, 8192)
    pipe = _native.Pipeline(snap, ring, 2, "buffered", False)
    arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
    engine = Failing(arena.data_ptr(), arena.numel(), lag=2)
    with pytest.raises(RuntimeError, match="device lost"):
        drive(pipe, ring, engine)
    assert engine.drain() == []  # drive drained every copy before re-raising
    # The shared ring is usable again by the next restore.
    tensors, _ = restore_to_host(snap_path, chunk_bytes=8192, slots=3)
    _assert_same(tensors, _state())


def test_cuda_copy_engine_against_fake_driver(snap_path: str) -> None:
    cu = FakeDriver(polls_until_ready=3)
    snap = _native.Snapshot(snap_path)
    ring = _native.Ring(3, 8192)
    pipe = _native.Pipeline(snap, ring, 2, "auto", True)
    arena = torch.full((pipe.arena_size,), 0xAB, dtype=torch.uint8)  # poison: every byte must be written
    engine = CudaCopyEngine(cu, arena.data_ptr(), arena.numel(), ring.slots, streams=2)
    stats = drive(pipe, ring, engine)
    engine.close()
    assert cu.copies == stats.chunks
    assert not cu.live_events and not cu.live_streams
    _assert_same(views_of(arena, tensor_table(snap), pipe.dst_offsets), _state())


def test_cuda_copy_engine_error_names_the_call(snap_path: str) -> None:
    cu = FakeDriver(fail_copy_at=4)
    snap = _native.Snapshot(snap_path)
    ring = _native.Ring(2, 8192)
    pipe = _native.Pipeline(snap, ring, 2, "buffered", False)
    arena = torch.empty(pipe.arena_size, dtype=torch.uint8)
    engine = CudaCopyEngine(cu, arena.data_ptr(), arena.numel(), ring.slots)
    with pytest.raises(CudaError, match="cuMemcpyHtoDAsync failed: CUDA_ERROR_INVALID_VALUE"):
        drive(pipe, ring, engine)
    engine.close()


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
