"""A snapshot larger than the memory a process may use restores on the CPU, and every byte of it
reads back right: the child process is capped by a memory cgroup at a quarter of the file's size,
so the page cache its reads fill must be reclaimed as it goes (mapped file pages are reclaimable,
not process memory). tests/test_zero_copy.py maps a sparse file larger than RAM; this one reads a
real file, every page, under a limit the kernel enforces."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import NoReturn

import pytest
import torch

import snapload
from _memcg import MemoryCgroup, MemoryCgroupUnavailable

LIMIT = 256 << 20
TENSOR_BYTES = 64 << 20
TENSORS = 16  # 1 GiB: four times the limit

# The child: import everything first (memory charged before it joins the cgroup stays outside),
# say "ready", wait until the parent has moved it into the cgroup, then restore with the defaults
# and hash every tensor's bytes (every page touched), and restore again with every CRC32C verified.
CHILD = r"""
import json, sys, zlib
import torch, snapload
path = sys.argv[1]
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
restored = snapload.restore(path)
crcs = {name: zlib.crc32(t.view(torch.uint8).numpy()) for name, t in restored.items()}
del restored
snapload.evict(path)  # the verified restore reads the disk again, under the same limit
snapload.restore(path, verify=True)
print(json.dumps({"crc32": crcs}), flush=True)
"""


def _skip_or_fail(reason: str) -> NoReturn:
    # CI runs as root on a machine with a memory cgroup: there the proof must run, not skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def _write_snapshot(path: Path) -> dict[str, int]:
    """Random, distinct bytes in every tensor (nothing sparse, nothing that dedupes); returns the
    CRC32 of each tensor, computed from the tensors in memory, not from any mapping."""
    base = torch.randint(0, 256, (TENSOR_BYTES,), dtype=torch.uint8, generator=torch.Generator().manual_seed(15))
    state = {f"w{i:02d}": torch.bitwise_xor(base, i) for i in range(TENSORS)}
    expected = {name: zlib.crc32(t.numpy()) for name, t in state.items()}
    snapload.snapshot(state, path)
    return expected


@pytest.mark.slow
def test_snapshot_four_times_the_memory_limit_restores_and_verifies(tmp_path: Path) -> None:
    try:
        cgroup = MemoryCgroup(LIMIT)
    except (MemoryCgroupUnavailable, OSError) as e:
        _skip_or_fail(f"no memory cgroup can be created here: {e}")
    with cgroup:
        path = tmp_path / "big.snap"
        expected = _write_snapshot(path)
        size = path.stat().st_size
        assert size >= 4 * LIMIT
        assert os.stat(path).st_blocks * 512 >= size - (1 << 20), "the file must be real, not sparse"
        # Pages this process wrote are charged to its own cgroup: the child must read them anew.
        snapload.evict(path)
        if snapload.residency(path).resident_bytes > 0:
            _skip_or_fail(f"the file system of {tmp_path} keeps pages cached after posix_fadvise(DONTNEED)")

        returncode, out = cgroup.run_child(CHILD, [str(path)], timeout=300)
        stats = cgroup.stats()

    assert returncode == 0, f"the restore died (exit {returncode}; -9 is the OOM killer); cgroup {stats}"
    assert stats["oom_kills"] == 0, stats
    assert stats["limit"] == LIMIT, stats
    # The limit really bound the child: its page cache reached the cap and was reclaimed.
    assert stats["limit_hits"] > 0, f"the restore never reached the {LIMIT >> 20} MiB limit: {stats}"
    assert stats["peak"] <= LIMIT
    got = json.loads(out.strip().splitlines()[-1])["crc32"]
    assert got == expected, "every tensor's bytes, read under the limit, match what was written"
