"""Shared test helpers: a pure-Python CRC32C, raw access to a snapshot's preamble and header (so
tests can forge files the writer would never produce), and bitwise tensor comparison.

Kept free of pytest so that worker processes (multiprocessing, subprocess scripts) can import it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

PREAMBLE_LEN = 32
MAGIC = b"SNAPLOAD"
_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C of ``data`` (continuing from ``crc``). Pure Python: fine for headers, not for data."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _gf2_times(matrix: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= matrix[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32c_zeros(n: int) -> int:
    """CRC32C of ``n`` zero bytes in O(log n): the CRC register is a linear function of its
    previous value when zeros are fed in, so raise that 32x32 GF(2) matrix to the 8n-th power.
    Lets tests forge big sparse snapshots (all-zero data) whose checksums are right."""
    # Operator for one zero bit: column i is the image of bit i.
    op = [_POLY] + [1 << (i - 1) for i in range(1, 32)]
    reg = 0xFFFFFFFF
    bits = 8 * n
    while bits:
        if bits & 1:
            reg = _gf2_times(op, reg)
        op = _gf2_square(op)
        bits >>= 1
    return reg ^ 0xFFFFFFFF


def round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass
class RawSnapshot:
    """A snapshot file taken apart: the preamble fields, the decoded header, and the data."""

    version: int
    flags: int
    header_len: int
    header_crc: int
    reserved: int
    header: dict[str, Any]
    data_start: int


def read_raw(path: str | os.PathLike[str]) -> RawSnapshot:
    with open(path, "rb") as f:
        pre = f.read(PREAMBLE_LEN)
        magic, version, flags, header_len, header_crc, reserved = struct.unpack("<8sIIQII", pre)
        assert magic == MAGIC, magic
        header = json.loads(f.read(header_len))
    data_start = round_up(PREAMBLE_LEN + header_len, header["alignment"])
    return RawSnapshot(version, flags, header_len, header_crc, reserved, header, data_start)


def encode_preamble(
    header_json: bytes, *, version: int = 1, flags: int = 0, reserved: int = 0, crc: int | None = None
) -> bytes:
    crc = crc32c(header_json) if crc is None else crc
    return struct.pack("<8sIIQII", MAGIC, version, flags, len(header_json), crc, reserved)


def encode_header(header: Mapping[str, Any] | str | bytes) -> bytes:
    if isinstance(header, bytes):
        return header
    if isinstance(header, str):
        return header.encode()
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()


def rewrite_header(path: str | os.PathLike[str], edit: Callable[[dict[str, Any]], Any]) -> None:
    """Re-encode ``path``'s header after ``edit(header)`` (which may mutate the dict or return a
    replacement: a dict, or raw text/bytes), fixing the preamble's length and CRC so that only
    the header's *meaning* is wrong. The new header must still end before the data start, so that
    every data byte stays where it was."""
    raw = read_raw(path)
    header = json.loads(json.dumps(raw.header))
    replaced = edit(header)
    body = encode_header(header if replaced is None else replaced)
    if PREAMBLE_LEN + len(body) > raw.data_start:
        raise ValueError(f"rewritten header ({len(body)} bytes) no longer fits before the data")
    with open(path, "r+b") as f:
        f.write(encode_preamble(body))
        f.write(body)
        f.write(bytes(raw.data_start - PREAMBLE_LEN - len(body)))


def patch_bytes(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip_bit(path: str | os.PathLike[str], offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def write_sparse_snapshot(
    path: str | os.PathLike[str],
    tensors: list[tuple[str, str, tuple[int, ...]]],
    *,
    itemsize: Mapping[str, int],
    alignment: int = 4096,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Forge a valid snapshot whose tensor data is all zeros and never written: the file is
    sparse, so gigabytes cost nothing on disk and nothing in the page cache until read. The
    checksums are right (``crc32c_zeros``), so ``verify=True`` passes."""
    entries: list[dict[str, Any]] = []
    cursor = alignment
    for name, dtype, shape in tensors:
        length = itemsize[dtype]
        for d in shape:
            length *= d
        entries.append(
            {
                "name": name,
                "dtype": dtype,
                "shape": list(shape),
                "offset": cursor,
                "length": length,
                "crc32c": f"{crc32c_zeros(length):08x}",
            }
        )
        cursor = round_up(cursor + length, alignment)
    file_size = max([alignment] + [e["offset"] + e["length"] for e in entries])
    header = {
        "alignment": alignment,
        "file_size": file_size,
        "checksum": "crc32c",
        "metadata": dict(metadata or {}),
        "tensors": entries,
    }
    body = encode_header(header)
    assert PREAMBLE_LEN + len(body) <= alignment, "forged header must fit in the first page"
    with open(path, "wb") as f:
        f.write(encode_preamble(body))
        f.write(body)
        f.truncate(file_size)
    return header


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as a flat uint8 tensor (works for 0-d, empty, bool, float8, complex32)."""
    flat = t.detach().contiguous().reshape(-1)
    # torch deems empty and one-element tensors contiguous whatever their stride, then refuses
    # to view them as bytes unless the stride is 1.
    flat = flat.as_strided((flat.numel(),), (1,)) if flat.numel() <= 1 else flat
    return flat.view(torch.uint8)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes. NaNs, float8 and complex32 have no usable ``==``, so compare
    the raw bytes instead of the values."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(tensor_bytes(a), tensor_bytes(b))


def assert_state_equal(restored: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    assert list(restored) == list(expected), "names (and their order) must survive the round trip"
    for name, want in expected.items():
        got = restored[name]
        assert got.dtype == want.dtype, f"{name!r}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{name!r}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert bitwise_equal(got, want), f"{name!r}: bytes differ"


# --- Worker processes (run in forkserver children; must be importable by name) -----------------


def version_state(version: int, nbytes: int) -> dict[str, torch.Tensor]:
    """A state dict that says which version it is in every tensor, with a layout that depends
    on the version (``pad`` grows), so a reader mixing two versions' header and data shows."""
    return {
        "pad": torch.full((1000 * (version % 7),), version % 256, dtype=torch.uint8),
        "version": torch.tensor([version], dtype=torch.int64),
        "data": torch.full((nbytes,), version % 256, dtype=torch.uint8),
        "tail": torch.full((1000,), version, dtype=torch.int32),
    }


def check_version_state(restored: Mapping[str, torch.Tensor], nbytes: int | None = None) -> int:
    """The version a restored ``version_state`` holds; raises if its tensors disagree."""
    version = int(restored["version"][0])
    assert restored["pad"].numel() == 1000 * (version % 7), "pad does not match version"
    assert bool(torch.all(restored["pad"] == version % 256)), "pad bytes do not match version"
    if nbytes is not None:
        assert restored["data"].numel() == nbytes
    assert bool(torch.all(restored["data"] == version % 256)), "data does not match version"
    assert bool(torch.all(restored["tail"] == version)), "tail does not match version"
    return version


def write_version_worker(path: str, version: int, nbytes: int, started: Any) -> None:
    import snapload

    state = version_state(version, nbytes)
    started.set()
    snapload.snapshot(state, path, metadata={"version": str(version)})


def write_versions_worker(path: str, versions: list[int], nbytes: int) -> None:
    import snapload

    for v in versions:
        snapload.snapshot(version_state(v, nbytes), path, metadata={"version": str(v)})


def restore_loop_worker(path: str, ready: Any, stop: Any, results: Any) -> None:
    """Restore (verified) until told to stop; report the versions seen, or the first error."""
    import traceback

    import snapload

    seen: list[int] = []
    ready.wait()
    try:
        while True:
            stopping = stop.is_set()
            restored = snapload.restore(path, verify=True)
            seen.append(check_version_state(restored))
            del restored
            if stopping:
                break
        results.put((os.getpid(), seen, None))
    except BaseException:
        results.put((os.getpid(), seen, traceback.format_exc()))
