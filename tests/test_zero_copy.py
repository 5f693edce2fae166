"""Zero copy: a CPU restore maps the file once and every tensor is a view of that mapping; no
tensor byte is read or copied until used, writes stay private, and the file is never changed."""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import resource
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

import snapload
from _helpers import assert_state_equal, tensor_bytes, write_sparse_snapshot
from snapload.dtypes import TORCH_BY_NAME

ITEMSIZE = {name: dt.itemsize for name, dt in TORCH_BY_NAME.items()}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("alignment", [4096, 2 << 20])
def test_every_tensor_is_a_view_of_one_mapping(
    snap_path: Path, sample_state: dict[str, torch.Tensor], alignment: int
) -> None:
    snapload.snapshot(sample_state, snap_path, alignment=alignment)
    info = snapload.open(snap_path)
    restored = snapload.restore(snap_path)
    offsets = {t.name: t.offset for t in info.tensors}
    non_empty = [n for n, t in restored.items() if t.numel() > 0]
    assert len(non_empty) >= 5
    # The base storage is the whole mapping, which starts at file offset 0.
    storage = restored[non_empty[0]].untyped_storage()
    base = storage.data_ptr()
    assert base % mmap.PAGESIZE == 0
    assert storage.nbytes() == info.file_size
    for name in non_empty:
        t = restored[name]
        assert t.untyped_storage().data_ptr() == base, f"{name!r} is not in the shared mapping"
        assert t.data_ptr() - base == offsets[name], f"{name!r} is not at its recorded offset"
        assert t.is_contiguous()


def resident_pages(address: int, length: int) -> int:
    """How many pages of a file mapping are in the page cache (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    rc = libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vec)
    assert rc == 0, f"mincore failed: errno {ctypes.get_errno()}"
    return sum(b & 1 for b in vec)


def test_restore_reads_no_tensor_data(tmp_path: Path) -> None:
    """Structural, not timed: restoring a 2 GiB snapshot maps it without reading it. The file is
    sparse and was never read, so any page the restore touched would show up in the page cache
    (mincore) and in this process's resident set."""
    path = tmp_path / "big.snap"
    gib = 1 << 30
    header = write_sparse_snapshot(
        path,
        [("a", "float32", (gib // 4,)), ("b", "bfloat16", (gib // 4, 2)), ("c", "int8", (7,))],
        itemsize=ITEMSIZE,
    )
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    restored = snapload.restore(path, populate="none")  # the lazy mode reads nothing
    rss_growth = proc.memory_info().rss - rss_before
    major_faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults_before

    storage = restored["a"].untyped_storage()
    assert storage.nbytes() == header["file_size"] > 2 * gib
    resident = resident_pages(storage.data_ptr(), storage.nbytes())
    # Only the first page (preamble + header, read with pread) may be cached.
    assert resident <= 4, f"restore pulled {resident} pages of tensor data into memory"
    assert rss_growth < 32 << 20, f"resident set grew by {rss_growth} bytes"
    assert major_faults <= 4
    # The data is there when asked for (holes read as zeros).
    assert restored["c"].tolist() == [0] * 7
    assert restored["b"].shape == (gib // 4, 2)


def test_restore_of_written_snapshot_does_not_grow_rss(snap_path: Path) -> None:
    """Same property for a snapshot the writer made (its pages are in the page cache, which is
    fine; they must not be mapped into this process until used)."""
    snapload.snapshot({"w": torch.ones(128 << 20, dtype=torch.uint8)}, snap_path)
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    restored = snapload.restore(snap_path, populate="none")
    assert proc.memory_info().rss - rss_before < 16 << 20
    assert int(restored["w"][-1]) == 1


def test_restore_in_a_fresh_process(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    """A process that never saw the tensors restores the same bytes (nothing leaks through this
    process's memory)."""
    snapload.snapshot(sample_state, snap_path)
    script = (
        "import hashlib, json, sys\n"
        "import snapload\n"
        "from _helpers import tensor_bytes\n"
        "out = {n: [str(t.dtype), list(t.shape), hashlib.sha256(tensor_bytes(t).numpy().tobytes()).hexdigest()]\n"
        "       for n, t in snapload.restore(sys.argv[1], verify=True).items()}\n"
        "print(json.dumps(out))\n"
    )
    tests_dir = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", script, str(snap_path)],
        capture_output=True, text=True, timeout=120, cwd=tests_dir, check=False,
    )
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout)
    expected = {
        n: [str(t.dtype), list(t.shape), hashlib.sha256(tensor_bytes(t).numpy().tobytes()).hexdigest()]
        for n, t in sample_state.items()
    }
    assert child == expected


def test_restored_tensors_are_writable_copy_on_write(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    snapload.snapshot(sample_state, snap_path)
    digest = file_digest(snap_path)
    first = snapload.restore(snap_path)
    first["embed.weight"].fill_(42.0)
    first["layer.bias"] += 1
    first["mask"][0] = False
    assert torch.all(first["embed.weight"] == 42.0)
    assert first["lm_head.weight"] is first["embed.weight"], "tied: one write shows in both names"
    assert torch.equal(first["layer.bias"], sample_state["layer.bias"] + 1)
    # The writes stayed in this process's private pages: the file and a new restore are untouched.
    assert file_digest(snap_path) == digest
    second = snapload.restore(snap_path, verify=True)
    assert_state_equal(second, sample_state)
    # ... and the first restore keeps its own modified copy.
    assert torch.all(first["embed.weight"] == 42.0)


def test_restore_emits_no_warning(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    """torch.frombuffer warns about read-only buffers; the mapping is writable, so none."""
    snapload.snapshot(sample_state, snap_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snapload.restore(snap_path)


def test_snapshot_over_path_while_tensors_live(snap_path: Path) -> None:
    old = {"w": torch.full((3000,), 1.0), "v": torch.arange(5)}
    new = {"w": torch.full((3000,), 2.0), "v": torch.arange(5) * 10, "extra": torch.ones(2)}
    snapload.snapshot(old, snap_path)
    restored_old = snapload.restore(snap_path)
    snapload.snapshot(new, snap_path)
    assert_state_equal(restored_old, old)
    assert_state_equal(snapload.restore(snap_path, verify=True), new)
    # Old tensors stay usable (and private) after the replacement.
    restored_old["w"].add_(1)
    assert torch.all(restored_old["w"] == 2.0)
    assert_state_equal(snapload.restore(snap_path), new)


def test_verify_passes_on_good_file(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    snapload.snapshot(sample_state, snap_path)
    for threads in (0, 1, 3):
        assert_state_equal(snapload.restore(snap_path, verify=True, threads=threads), sample_state)


def test_tensors_outlive_everything_else(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    """One tensor is enough to keep the mapping alive: drop the dict and collect garbage."""
    import gc

    snapload.snapshot(sample_state, snap_path)
    kept = snapload.restore(snap_path)["layer.weight"]
    gc.collect()
    snap_path.unlink()
    gc.collect()
    assert torch.equal(kept, sample_state["layer.weight"])


def test_snapshot_larger_than_memory_restores_and_reads(tmp_path: Path) -> None:
    """A snapshot half again the size of this machine's RAM restores (it is only mapped) and its
    pages can be read anywhere; the resident set stays small because mapped file pages are
    reclaimable page cache, not process memory."""
    total = psutil.virtual_memory().total
    per_tensor = 4 << 30
    count = int(total * 1.5) // per_tensor + 1
    path = tmp_path / "huge.snap"
    write_sparse_snapshot(
        path, [(f"w{i}", "bfloat16", (per_tensor // 2,)) for i in range(count)], itemsize=ITEMSIZE
    )
    assert os.path.getsize(path) > total
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    restored = snapload.restore(path)
    sampled = 0
    for t in restored.values():
        flat = t.view(torch.uint8)
        # One byte in every 4096th page (16 MiB apart), first and last byte too.
        sampled += int(flat[:: 4096 * 4096].sum()) + int(flat[0]) + int(flat[-1])
    assert sampled == 0  # holes read as zeros
    assert proc.memory_info().rss - rss_before < 256 << 20
