"""Bad files: every kind of damage gives its own snapload exception naming the file, from both
``open`` and ``restore``, before any tensor byte is trusted."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import snapload
from _helpers import PREAMBLE_LEN, RawSnapshot, flip_bit, patch_bytes, read_raw, rewrite_header
from snapload import (
    BadMagicError,
    ChecksumMismatchError,
    CorruptHeaderError,
    SnapshotError,
    TruncatedFileError,
    UnsupportedVersionError,
)


def good_state() -> dict[str, torch.Tensor]:
    a = torch.arange(1000, dtype=torch.float32)
    return {"a": a, "b": torch.arange(12).reshape(3, 4), "c": a}


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, RawSnapshot]:
    path = tmp_path / "bad.snap"
    snapload.snapshot(good_state(), path, metadata={"k": "v"})
    return path, read_raw(path)


Mutation = Callable[[Path, RawSnapshot], Any]


def truncate_to(size: Callable[[RawSnapshot], int]) -> Mutation:
    return lambda path, raw: os.truncate(path, size(raw))


def edit(fn: Callable[[dict[str, Any]], Any]) -> Mutation:
    """Change the header's meaning; its CRC is fixed, so only validation can catch it."""
    return lambda path, raw: rewrite_header(path, fn)


def tensor(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in header["tensors"] if t["name"] == name)


def set_field(name: str, field: str, value: Any) -> Mutation:
    return edit(lambda h: tensor(h, name).__setitem__(field, value))


def header_field(field: str, value: Any) -> Mutation:
    return edit(lambda h: h.__setitem__(field, value))


def preamble_u32(at: int, value: int) -> Mutation:
    return lambda path, raw: patch_bytes(path, at, struct.pack("<I", value))


def preamble_u64(at: int, value: int | Callable[[RawSnapshot], int]) -> Mutation:
    return lambda path, raw: patch_bytes(path, at, struct.pack("<Q", value(raw) if callable(value) else value))


def append(n: int) -> Mutation:
    def run(path: Path, raw: RawSnapshot) -> None:
        with open(path, "ab") as f:
            f.write(b"\0" * n)

    return run


def replace_file(content: bytes) -> Mutation:
    return lambda path, raw: path.write_bytes(content)


def alias_with_dtype(h: dict[str, Any]) -> None:
    tensor(h, "c")["dtype"] = "float32"


def duplicate_name(h: dict[str, Any]) -> None:
    tensor(h, "b")["name"] = "a"


def alias_of_alias(h: dict[str, Any]) -> None:
    h["tensors"].append({"name": "d", "alias_of": "c"})


def alias_forward(h: dict[str, Any]) -> None:
    h["tensors"].insert(0, {"name": "d", "alias_of": "a"})


def drop_field(name: str, field: str) -> Mutation:
    return edit(lambda h: tensor(h, name).pop(field))


CASES: list[tuple[str, Mutation, type[SnapshotError]]] = [
    # Truncation, at each region boundary of the file.
    ("empty file", truncate_to(lambda r: 0), TruncatedFileError),
    ("inside magic", truncate_to(lambda r: 5), TruncatedFileError),
    ("inside preamble", truncate_to(lambda r: 20), TruncatedFileError),
    ("inside header", truncate_to(lambda r: PREAMBLE_LEN + r.header_len // 2), TruncatedFileError),
    ("end of header", truncate_to(lambda r: PREAMBLE_LEN + r.header_len), TruncatedFileError),
    ("at data start", truncate_to(lambda r: r.data_start), TruncatedFileError),
    ("inside first tensor", truncate_to(lambda r: r.data_start + 100), TruncatedFileError),
    ("one byte short", truncate_to(lambda r: r.header["file_size"] - 1), TruncatedFileError),
    # Not a snapshot, or one from another version.
    ("wrong magic", lambda path, raw: patch_bytes(path, 0, b"SNAPLOAX"), BadMagicError),
    ("safetensors file", replace_file(struct.pack("<Q", 2) + b"{}" + b"\0" * 64), BadMagicError),
    ("text file", replace_file(b"this is not a snapshot, just some text\n" * 3), BadMagicError),
    ("version 2", preamble_u32(8, 2), UnsupportedVersionError),
    ("version 0", preamble_u32(8, 0), UnsupportedVersionError),
    # Preamble damage.
    ("flags set", preamble_u32(12, 1), CorruptHeaderError),
    ("reserved set", preamble_u32(28, 0x80000000), CorruptHeaderError),
    ("header length zero", preamble_u64(16, 0), CorruptHeaderError),
    ("header length huge", preamble_u64(16, 1 << 40), CorruptHeaderError),
    ("header length one short", preamble_u64(16, lambda r: r.header_len - 1), CorruptHeaderError),
    ("header length past end", preamble_u64(16, lambda r: r.header["file_size"]), TruncatedFileError),
    ("header crc flipped", lambda path, raw: flip_bit(path, 24, 3), CorruptHeaderError),
    # Header bytes damaged (the CRC catches them).
    ("header byte flipped", lambda path, raw: flip_bit(path, PREAMBLE_LEN + raw.header_len // 2, 1), CorruptHeaderError),
    ("header last byte flipped", lambda path, raw: flip_bit(path, PREAMBLE_LEN + raw.header_len - 1, 0), CorruptHeaderError),
    # Header rewritten with a valid CRC: validation must catch the meaning.
    ("not json", edit(lambda h: "not json at all"), CorruptHeaderError),
    ("json array", edit(lambda h: "[1, 2, 3]"), CorruptHeaderError),
    ("invalid utf-8", edit(lambda h: b'{"alignment": \xff}'), CorruptHeaderError),
    ("offset past end", set_field("b", "offset", 16384), CorruptHeaderError),
    ("offset unaligned", set_field("b", "offset", 8196), CorruptHeaderError),
    ("offset inside header", set_field("a", "offset", 0), CorruptHeaderError),
    ("offset negative", set_field("a", "offset", -4096), CorruptHeaderError),
    ("tensors overlap", set_field("b", "offset", 4096), CorruptHeaderError),
    ("huge shape", set_field("a", "shape", [1 << 40, 1 << 40]), CorruptHeaderError),
    ("huge shape and length", edit(lambda h: tensor(h, "b").update(shape=[1 << 40], length=8 << 40)), CorruptHeaderError),
    ("length mismatch", set_field("a", "length", 4004), CorruptHeaderError),
    ("rank too high", edit(lambda h: tensor(h, "b").update(shape=[1] * 64 + [12])), CorruptHeaderError),
    ("unknown dtype", set_field("a", "dtype", "float128"), CorruptHeaderError),
    ("dtype not a string", set_field("a", "dtype", 7), CorruptHeaderError),
    ("missing crc", drop_field("a", "crc32c"), CorruptHeaderError),
    ("missing shape", drop_field("b", "shape"), CorruptHeaderError),
    ("crc not hex", set_field("a", "crc32c", "xyzxyzxy"), CorruptHeaderError),
    ("crc too short", set_field("a", "crc32c", "abc"), CorruptHeaderError),
    ("empty name", set_field("b", "name", ""), CorruptHeaderError),
    ("duplicate name", edit(duplicate_name), CorruptHeaderError),
    ("alias of unknown", set_field("c", "alias_of", "zz"), CorruptHeaderError),
    ("alias of later tensor", edit(alias_forward), CorruptHeaderError),
    ("alias of alias", edit(alias_of_alias), CorruptHeaderError),
    ("alias with dtype", edit(alias_with_dtype), CorruptHeaderError),
    ("alignment not power of two", header_field("alignment", 3000), CorruptHeaderError),
    ("alignment zero", header_field("alignment", 0), CorruptHeaderError),
    ("alignment too small", header_field("alignment", 512), CorruptHeaderError),
    ("unknown checksum", header_field("checksum", "md5"), CorruptHeaderError),
    ("metadata not strings", header_field("metadata", {"k": 1}), CorruptHeaderError),
    ("tensors not a list", header_field("tensors", "a,b"), CorruptHeaderError),
    ("missing file_size", edit(lambda h: h.pop("file_size")), CorruptHeaderError),
    ("file_size larger", edit(lambda h: h.__setitem__("file_size", h["file_size"] + 1)), TruncatedFileError),
    ("file_size smaller", edit(lambda h: h.__setitem__("file_size", h["file_size"] - 1)), CorruptHeaderError),
    # Bytes appended after the last tensor.
    ("extended by one byte", append(1), CorruptHeaderError),
    ("extended by a page", append(4096), CorruptHeaderError),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file(good: tuple[Path, RawSnapshot], mutate: Mutation, expected: type[SnapshotError]) -> None:
    path, raw = good
    mutate(path, raw)
    for call in (snapload.open, snapload.restore, lambda p: snapload.restore(p, verify=True)):
        with pytest.raises(SnapshotError) as err:
            call(path)
        assert type(err.value) is expected, f"{type(err.value).__name__}: {err.value}"
        assert str(path) in str(err.value), f"message does not name the file: {err.value}"


def test_every_case_is_distinct() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("where", ["first byte", "middle", "last byte"])
def test_flipped_tensor_byte(good: tuple[Path, RawSnapshot], where: str) -> None:
    """Data damage is invisible to the header checks: a plain restore returns the damaged bytes
    (it reads nothing up front), ``verify=True`` names the damaged tensor."""
    path, raw = good
    a = tensor(raw.header, "a")
    at = {"first byte": 0, "middle": a["length"] // 2, "last byte": a["length"] - 1}[where]
    flip_bit(path, a["offset"] + at, 5)
    restored = snapload.restore(path)
    expected = good_state()["a"]
    assert not torch.equal(restored["a"], expected)
    assert torch.equal(restored["b"], good_state()["b"])
    with pytest.raises(ChecksumMismatchError) as err:
        snapload.restore(path, verify=True)
    assert "'a'" in str(err.value) or '"a"' in str(err.value), str(err.value)
    assert str(path) in str(err.value)


def test_flipped_padding_byte_is_harmless(good: tuple[Path, RawSnapshot]) -> None:
    """Padding between tensors belongs to no tensor; damage there changes nothing."""
    path, raw = good
    a = tensor(raw.header, "a")
    flip_bit(path, a["offset"] + a["length"] + 10, 0)
    restored = snapload.restore(path, verify=True)
    assert torch.equal(restored["a"], good_state()["a"])


def test_checksum_mismatch_names_second_tensor(good: tuple[Path, RawSnapshot]) -> None:
    path, raw = good
    b = tensor(raw.header, "b")
    flip_bit(path, b["offset"] + 7, 7)
    with pytest.raises(ChecksumMismatchError, match=r"tensor .b."):
        snapload.restore(path, verify=True)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.snap"
    for call in (snapload.open, snapload.restore):
        with pytest.raises(FileNotFoundError) as err:
            call(path)
        assert err.value.filename == str(path)


def test_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir.snap"
    with pytest.raises(FileNotFoundError) as err:
        snapload.restore(path)
    assert err.value.filename == str(path)


def test_directory(tmp_path: Path) -> None:
    for call in (snapload.open, snapload.restore):
        with pytest.raises(OSError) as err:
            call(tmp_path)
        assert not isinstance(err.value, SnapshotError)
        assert err.value.filename == str(tmp_path)
        assert str(tmp_path) in str(err.value)


def test_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop root from reading")
    path = tmp_path / "secret.snap"
    snapload.snapshot(good_state(), path)
    path.chmod(0)
    with pytest.raises(PermissionError) as err:
        snapload.restore(path)
    assert err.value.filename == str(path)


def test_writer_refuses_unknown_path(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "x.snap"
    with pytest.raises(FileNotFoundError):
        snapload.snapshot(good_state(), target)
