"""CUDA restores on a real device. Skipped, with the reason, where there is none; the pipeline
these share with the host sink is covered on the CPU by tests/test_pipeline.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import snapload

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (torch.cuda.is_available() is False)"),
]


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sd = {f"blk{i}.w": torch.randn(513 + i, 1024, generator=g).to(torch.bfloat16) for i in range(16)}
    sd["ids"] = torch.arange(1000, dtype=torch.int64)
    sd["flag"] = torch.tensor(True)
    sd["empty"] = torch.empty(0, 7, dtype=torch.float16)
    sd["tied"] = sd["blk2.w"]
    return sd


@pytest.fixture(scope="module")
def snap_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cuda") / "m.snap")
    snapload.snapshot(_state(), path)
    return path


@pytest.mark.parametrize("read_mode", ["auto", "direct", "buffered", "mmap"])
def test_restore_to_cuda_is_exact_and_one_arena(snap_path: str, read_mode: str) -> None:
    from snapload.cuda import restore_with_stats

    tensors, stats = restore_with_stats(snap_path, "cuda", read_mode=read_mode, chunk_bytes=1 << 20, slots=3, verify=True)
    expected = _state()
    for k, v in expected.items():
        assert tensors[k].device.type == "cuda"
        assert torch.equal(tensors[k].cpu(), v), k
    assert tensors["tied"] is tensors["blk2.w"]
    nonempty = [t for t in tensors.values() if t.numel()]
    base = nonempty[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for t in nonempty), "all tensors are views of one arena"
    assert stats.bytes >= sum(t.nbytes for k, t in expected.items() if k != "tied")
    assert stats.extra["pinned"] is True, "the ring must be page-locked, or copies run at pageable speed"


class CountingDriver:
    """The real cuda-python driver, counting streams and events created and destroyed, and
    failing the Nth host-to-device copy on request."""

    def __init__(self, real: Any, fail_copy_at: int | None = None) -> None:
        self._real = real
        self.fail_copy_at = fail_copy_at
        self.copies = 0
        self.streams: set[int] = set()
        self.events: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def cuStreamCreate(self, *a: Any) -> Any:
        r = self._real.cuStreamCreate(*a)
        self.streams.add(int(r[1]))
        return r

    def cuStreamDestroy(self, s: Any) -> Any:
        self.streams.discard(int(s))
        return self._real.cuStreamDestroy(s)

    def cuEventCreate(self, *a: Any) -> Any:
        r = self._real.cuEventCreate(*a)
        self.events.add(int(r[1]))
        return r

    def cuEventDestroy(self, e: Any) -> Any:
        self.events.discard(int(e))
        return self._real.cuEventDestroy(e)

    def cuMemcpyHtoDAsync(self, *a: Any) -> Any:
        if self.fail_copy_at is not None and self.copies == self.fail_copy_at:
            return (self._real.CUresult.CUDA_ERROR_INVALID_VALUE,)
        self.copies += 1
        return self._real.cuMemcpyHtoDAsync(*a)


def test_an_injected_copy_error_leaves_no_stream_or_event_and_the_ring_serves_again(snap_path: str, monkeypatch) -> None:
    import snapload.cuda as cuda

    real = cuda.load_driver()
    counting = CountingDriver(real, fail_copy_at=3)
    monkeypatch.setattr(cuda, "load_driver", lambda: counting)
    with pytest.raises(cuda.CudaError, match="cuMemcpyHtoDAsync"):
        cuda.restore(snap_path, "cuda", chunk_bytes=1 << 20, slots=3)
    assert counting.streams == set() and counting.events == set(), "streams or events leaked"
    counting.fail_copy_at = None
    tensors = cuda.restore(snap_path, "cuda", chunk_bytes=1 << 20, slots=3, verify=True)
    assert all(torch.equal(tensors[k].cpu(), v) for k, v in _state().items())
    assert counting.streams == set() and counting.events == set()


def test_concurrent_cuda_restores_from_threads_are_bit_exact(tmp_path) -> None:
    snaps = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        state = {f"t{i}": torch.randint(-(2**31), 2**31 - 1, (1 << 20,), dtype=torch.int32, generator=g) for i in range(24)}
        path = str(tmp_path / f"m{seed}.snap")
        snapload.snapshot(state, path)
        snaps.append((path, state))
    errors: list[str] = []

    def restores(path: str, state: dict[str, torch.Tensor]) -> None:
        try:
            for k in range(6):
                got = snapload.restore(path, "cuda", chunk_bytes=1 << 20, slots=4)
                errors.extend(f"{path} #{k} {n}" for n, v in state.items() if not torch.equal(got[n].cpu(), v))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=restores, args=s) for s in snaps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a restore thread hung"
    assert not errors, errors[:5]


def test_a_restore_on_a_side_stream_sees_the_arena_ordered(snap_path: str) -> None:
    # The arena is allocated on the caller's current stream; copies on the engine's own streams
    # must wait for it, and the tensors must be complete for work queued on that stream after.
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # queue work ahead of the allocation on this stream
        tensors = snapload.restore(snap_path, "cuda", chunk_bytes=1 << 20, slots=3)
        host = {k: v.cpu() for k, v in tensors.items()}  # ordered on the side stream
    side.synchronize()
    for k, v in _state().items():
        assert torch.equal(host[k], v), k


def test_arena_is_freed_with_the_last_tensor(snap_path: str) -> None:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    tensors = snapload.restore(snap_path, "cuda")
    assert torch.cuda.memory_allocated() > before
    keep = tensors["blk5.w"]
    del tensors
    assert torch.cuda.memory_allocated() > before, "a live view keeps the arena"
    del keep
    assert torch.cuda.memory_allocated() == before


def test_restore_module_to_cuda(snap_path: str, tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    path = str(tmp_path / "mlp.snap")
    snapload.snapshot(model, path)
    with snapload.init_empty_weights():
        empty = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    snapload.restore_module(empty, path, "cuda")
    x = torch.randn(4, 64)
    assert torch.equal(empty(x.cuda()).cpu(), model.cuda()(x.cuda()).cpu())


def test_out_of_memory_says_how_much_was_needed(snap_path: str, monkeypatch) -> None:
    real_empty = torch.empty

    def empty_without_device_memory(*args, **kwargs):
        if str(kwargs.get("device", "cpu")).startswith("cuda"):
            raise torch.OutOfMemoryError("simulated: no device memory")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty_without_device_memory)
    with pytest.raises(snapload.CudaUnavailableError, match=r"needs [0-9.]+ GiB"):
        snapload.restore(snap_path, "cuda")


def test_snapshot_of_cuda_tensors_is_staged_and_exact(tmp_path) -> None:
    sd = {k: v.cuda() for k, v in _state().items()}
    sd["tied"] = sd["blk2.w"]
    path = str(tmp_path / "from_gpu.snap")
    snapload.snapshot(sd, path, staging_bytes=1 << 20)  # tensors larger than the staging buffer
    back = snapload.restore(path, verify=True)
    for k, v in _state().items():
        assert torch.equal(back[k], v), k
    assert back["tied"] is back["blk2.w"]
