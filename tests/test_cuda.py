"""CUDA restores on a real device. Skipped, with the reason, where there is none; the pipeline
these share with the host sink is covered on the CPU by tests/test_pipeline.py."""

from __future__ import annotations

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
