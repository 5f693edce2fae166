"""prefetch / residency / evict and the `warm` and `status` commands; the light import."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

import snapload
from snapload.cli import main


@pytest.fixture()
def snap(tmp_path) -> str:
    path = str(tmp_path / "w.snap")
    snapload.snapshot({f"t{i}": torch.randn(256, 1024) for i in range(8)}, path)
    return path


def _evicted(path: str) -> bool:
    snapload.evict(path)
    # validate=False: the default check reads the header, which would leave its pages cached.
    return snapload.residency(path, validate=False).resident_bytes == 0


@pytest.mark.parametrize("background", [True, False], ids=["background", "normal-priority"])
def test_prefetch_makes_the_file_resident_and_reports_progress(snap: str, background: bool) -> None:
    if not _evicted(snap):
        pytest.skip("this file system keeps pages cached after posix_fadvise(DONTNEED)")
    handle = snapload.prefetch(snap, threads=3, chunk_bytes=1 << 20, background=background)
    handle.wait()
    assert handle.bytes_done == handle.total == snapload.residency(snap).size
    assert snapload.residency(snap).fraction == 1.0


def test_prefetch_of_a_missing_file_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        snapload.prefetch(tmp_path / "nope.snap")
    assert e.value.filename.endswith("nope.snap")


def test_warm_and_status_commands(snap: str, capsys) -> None:
    if not _evicted(snap):
        pytest.skip("this file system keeps pages cached after posix_fadvise(DONTNEED)")
    assert main(["status", snap]) == 0
    assert "0.0% resident" in capsys.readouterr().out
    assert main(["warm", snap]) == 0
    out = capsys.readouterr().out
    assert "100% resident" in out and "was 0%" in out
    assert main(["status", snap]) == 0
    assert "100.0% resident" in capsys.readouterr().out


def test_import_snapload_does_not_import_torch() -> None:
    code = "import sys, snapload; snapload.residency; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lazy_attributes_resolve() -> None:
    code = "import snapload; print(callable(snapload.restore), callable(snapload.convert), callable(snapload.snapshot))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True True"


@pytest.mark.parametrize("populate", ["auto", "none", "background", "sync"])
def test_restore_populate_modes_give_the_same_tensors(tmp_path, populate: str) -> None:
    # The expected tensors are the originals, in this process's own memory: not another restore
    # (which would compare the mapping with itself) and nothing that maps the file, so eviction
    # can drop every page and the residency checks below see only what this restore read.
    g = torch.Generator().manual_seed(14)
    original = {f"t{i}": torch.randn(256, 1024, generator=g) for i in range(8)}
    snap = str(tmp_path / "w.snap")
    snapload.snapshot(original, snap)
    if not _evicted(snap):
        pytest.skip("this file system keeps pages cached after posix_fadvise(DONTNEED)")
    got = snapload.restore(snap, populate=populate)
    if populate == "sync":
        assert snapload.residency(snap).fraction == 1.0, "sync returns with the whole file read"
    if populate in ("background", "auto"):  # auto is background for a file this small
        deadline = time.monotonic() + 20
        while snapload.residency(snap).fraction < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapload.residency(snap).fraction == 1.0, "background threads read the whole file"
    assert list(got) == list(original)
    for name, want in original.items():
        assert torch.equal(got[name], want), name


def test_populate_rejects_unknown_modes_and_cuda(snap: str) -> None:
    with pytest.raises(ValueError, match="populate"):
        snapload.restore(snap, populate="eager")
    with pytest.raises(TypeError, match="populate"):
        snapload.restore(snap, "cuda", populate="sync")
