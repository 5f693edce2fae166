"""``restore(populate="auto")`` sizes its choice by the memory this process may really use: inside a
capped memory cgroup (a serverless container), the cgroup's room, not the machine's MemAvailable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _memcg import MemoryCgroup, MemoryCgroupUnavailable
from snapload import _memory, _restore

LIMIT = 256 << 20


def _fake_cgroup(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_v2_room_is_limit_less_memory_that_cannot_be_reclaimed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf, parent = tmp_path / "a" / "b", tmp_path / "a"
    # Leaf: 1 GiB cap, 700 MiB charged of which 500 MiB is file cache: 824 MiB of room.
    _fake_cgroup(leaf, {"memory.max": str(1 << 30), "memory.current": str(700 << 20), "memory.stat": f"anon 1\nfile {500 << 20}\n"})
    _fake_cgroup(parent, {"memory.max": "max\n", "memory.current": str(900 << 20), "memory.stat": "file 0\n"})
    monkeypatch.setattr(_memory, "_memory_cgroup_dirs", lambda: [(str(leaf), 2), (str(parent), 2)])
    assert _memory.cgroup_room_bytes() == (1 << 30) - (200 << 20)


def test_v1_the_tightest_level_wins_and_unlimited_is_no_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf, parent, root = tmp_path / "x" / "y", tmp_path / "x", tmp_path
    _fake_cgroup(leaf, {"memory.limit_in_bytes": str(2 << 30), "memory.usage_in_bytes": "0", "memory.stat": "cache 0\n"})
    # The parent is tighter: 512 MiB cap, 300 MiB used, 100 MiB of it cache.
    _fake_cgroup(parent, {"memory.limit_in_bytes": str(512 << 20), "memory.usage_in_bytes": str(300 << 20), "memory.stat": f"cache 1\ntotal_cache {100 << 20}\n"})
    _fake_cgroup(root, {"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": str(5 << 30)})
    monkeypatch.setattr(_memory, "_memory_cgroup_dirs", lambda: [(str(leaf), 1), (str(parent), 1), (str(root), 1)])
    assert _memory.cgroup_room_bytes() == (512 << 20) - (200 << 20)


def test_no_limit_anywhere_leaves_machine_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_memory_cgroup_dirs", lambda: [])
    assert _memory.cgroup_room_bytes() is None
    machine = _memory.available_bytes()
    assert machine is not None and machine > 0


def test_auto_populate_follows_the_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 << 30)
    assert _restore._auto_populate(400 << 20) == "background"
    assert _restore._auto_populate(600 << 20) == "none"
    monkeypatch.setattr(_memory, "available_bytes", lambda: None)
    assert _restore._auto_populate(1) == "none"


CHILD = r"""
import json, sys
from snapload import _memory, _restore
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
size = int(sys.argv[1])
print(json.dumps({"room": _memory.cgroup_room_bytes(), "available": _memory.available_bytes(),
                  "auto": _restore._auto_populate(size)}), flush=True)
"""


@pytest.mark.slow
def test_a_real_memory_cgroup_caps_the_choice() -> None:
    """Outside the cgroup a 200 MiB file would be populated (this machine has GiBs free); inside a
    256 MiB cap it must not be, because it would not fit in half the room."""
    size = 200 << 20
    machine = _memory.available_bytes()
    assert machine is not None and machine > 4 * size, "this check needs a machine with over 800 MiB free"
    try:
        cgroup = MemoryCgroup(LIMIT)
    except (MemoryCgroupUnavailable, OSError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run this test: no memory cgroup can be created here: {e}")
        pytest.skip(f"no memory cgroup can be created here: {e}")
    with cgroup:
        returncode, out = cgroup.run_child(CHILD, [str(size)], timeout=60)
    assert returncode == 0
    got = json.loads(out.strip().splitlines()[-1])
    assert got["room"] is not None and 0 < got["room"] <= LIMIT, got
    assert got["available"] <= LIMIT, got
    assert got["auto"] == "none", got
    assert _restore._auto_populate(size) == "background"
