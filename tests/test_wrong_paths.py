"""Paths that are not what the user meant: a folder, a missing, cut-off or foreign file given to
warm/status/prefetch/residency, and destinations that cannot be written given to convert/snapshot.
Each fails up front, with the message ``inspect`` gives, naming the path the user typed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import snapload
from snapload.cli import main


@pytest.fixture
def snap(tmp_path: Path) -> Path:
    path = tmp_path / "ok.snap"
    snapload.snapshot({"a": torch.arange(3000, dtype=torch.float32)}, path)
    return path


@pytest.fixture
def truncated(tmp_path: Path, snap: Path) -> Path:
    path = tmp_path / "cut.snap"
    path.write_bytes(snap.read_bytes()[:-100])
    return path


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4)}, str(path))
    return path


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["warm", "status"])
def test_cache_commands_give_inspects_message_and_status(
    command: str, tmp_path: Path, truncated: Path, foreign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (tmp_path, truncated, foreign, tmp_path / "missing.snap"):
        want = _cli(["inspect", str(path)], capsys)
        got = _cli([command, str(path)], capsys)
        assert got[0] == want[0] != 0, (command, path, got)
        assert got[1] == "", "no residency report for something that is not a snapshot"
        assert str(path) in got[2] and "No such device" not in got[2]
        assert got[2] == want[2]


def test_cache_commands_check_every_path_before_warming_any(
    snap: Path, truncated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(["warm", str(snap), str(truncated)], capsys)
    assert code == 1 and out == "" and "truncated file" in err and str(truncated) in err


def test_cache_commands_still_report_snapshots(snap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["warm", str(snap)], capsys)
    assert code == 0 and out.startswith(f"{snap}: 100% resident")
    code, out, _ = _cli(["status", str(snap)], capsys)
    assert code == 0 and out.startswith(f"{snap}: 100.0% resident")


def test_prefetch_and_residency_validate_like_inspect(tmp_path: Path, truncated: Path, foreign: Path) -> None:
    with pytest.raises(IsADirectoryError) as e:
        snapload.prefetch(tmp_path)
    assert e.value.filename == str(tmp_path)
    with pytest.raises(IsADirectoryError):
        snapload.residency(tmp_path)
    for fn in (snapload.prefetch, snapload.residency):
        with pytest.raises(snapload.TruncatedFileError, match=str(truncated)):
            fn(truncated)
        with pytest.raises(snapload.BadMagicError, match=str(foreign)):
            fn(foreign)


def test_validate_false_serves_any_regular_file_but_never_a_folder(tmp_path: Path, foreign: Path) -> None:
    handle = snapload.prefetch(foreign, validate=False)
    handle.wait()
    assert handle.bytes_done == handle.total == os.path.getsize(foreign)
    assert snapload.residency(foreign, validate=False).size == os.path.getsize(foreign)
    for call in (
        lambda: snapload.prefetch(tmp_path, validate=False),
        lambda: snapload.residency(tmp_path, validate=False),
        lambda: snapload.evict(tmp_path),
    ):
        with pytest.raises(IsADirectoryError) as e:
            call()
        assert e.value.filename == str(tmp_path) and "No such device" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# destinations


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if "snapload-tmp" in p.name]


def test_convert_to_a_missing_folder_names_the_destination(
    tmp_path: Path, foreign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "missing" / "out.snap"
    with pytest.raises(FileNotFoundError) as e:
        snapload.convert(foreign, dst)
    assert e.value.filename == str(dst)
    code, out, err = _cli(["convert", str(foreign), str(dst)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"snapload: error: {dst}: ") and "snapload-tmp" not in err


def test_snapshot_to_a_missing_folder_names_the_destination(tmp_path: Path) -> None:
    dst = tmp_path / "missing" / "x.snap"
    with pytest.raises(FileNotFoundError) as e:
        snapload.snapshot({"a": torch.zeros(2)}, dst)
    assert e.value.filename == str(dst) and "snapload-tmp" not in str(e.value)


def test_a_destination_that_is_a_folder_fails_before_the_source_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreign: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from snapload import _convert

    def must_not_run(*_: object) -> None:
        raise AssertionError("the source was opened before the destination was checked")

    monkeypatch.setattr(_convert, "_open_source", must_not_run)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        snapload.convert(foreign, folder)
    assert e.value.filename == str(folder)
    code, _, err = _cli(["convert", str(foreign), str(folder)], capsys)
    assert code == 2 and f"{folder}: " in err
    _no_temporaries(tmp_path)
    with pytest.raises(IsADirectoryError):
        snapload.snapshot({"a": torch.zeros(2)}, folder)
    _no_temporaries(tmp_path)


def test_a_destination_under_a_file_is_not_a_directory(tmp_path: Path, foreign: Path) -> None:
    dst = foreign / "x.snap"
    with pytest.raises(NotADirectoryError) as e:
        snapload.convert(foreign, dst)
    assert e.value.filename == str(dst)
