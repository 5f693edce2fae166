"""A temporary memory cgroup for one test process: create a child of this process's own memory
cgroup (so that every limit above it still applies), cap it, move a process in, read what the
kernel accounted, and remove it.

cgroup v2 (``memory.max``, ``memory.events``) and v1 (``memory.limit_in_bytes``,
``memory.failcnt``, ``memory.oom_control``) are both handled because this machine and CI run a
hybrid hierarchy with the memory controller on v1. Where no writable memory controller exists,
``MemoryCgroupUnavailable`` says exactly why. Hand-written because no maintained library on PyPI
covers creating, limiting and removing a v1 and v2 cgroup with nothing else attached.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from snapload._memory import mounts, own_cgroups

_counter = itertools.count()


class MemoryCgroupUnavailable(Exception):
    """No memory cgroup can be created here (the message says why)."""


def _parent_dir() -> tuple[Path, int]:
    """The directory of this process's memory cgroup and the cgroup version serving it."""
    own = own_cgroups()
    mounted = mounts()
    for mnt, fstype, opts in mounted:
        if fstype == "cgroup" and "memory" in opts and "memory" in own:
            return Path(mnt + own["memory"]), 1
    for mnt, fstype, _opts in mounted:
        if fstype == "cgroup2" and "" in own:
            controllers = Path(mnt, "cgroup.controllers")
            if controllers.exists() and "memory" in controllers.read_text().split():
                return Path(mnt + own[""]), 2
    raise MemoryCgroupUnavailable("no cgroup v1 memory controller and no cgroup v2 hierarchy with one is mounted")


class MemoryCgroup:
    """Use as a context manager; the cgroup is removed on exit (its processes must have exited)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        parent, self.version = _parent_dir()
        self.path = parent / f"snapload-test-{os.getpid()}-{next(_counter)}"
        try:
            self.path.mkdir()
        except OSError as e:
            raise MemoryCgroupUnavailable(f"cannot create a child cgroup under {parent}: {e}") from e
        try:
            limit_file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            if not (self.path / limit_file).exists():
                # v2: a cgroup that holds processes cannot delegate controllers to children.
                raise MemoryCgroupUnavailable(f"{self.path} has no {limit_file}: the memory controller is not delegated here")
            (self.path / limit_file).write_text(str(limit_bytes))
        except BaseException:
            self.remove()
            raise

    def add(self, pid: int) -> None:
        """Move every thread of ``pid`` in; memory it charges from now on counts against the limit."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def _kv(self, name: str) -> dict[str, int]:
        out = {}
        for line in (self.path / name).read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
        return out

    def stats(self) -> dict[str, int]:
        """``limit``, ``peak`` (highest usage charged), ``limit_hits`` (times usage reached the
        limit and the kernel had to reclaim) and ``oom_kills``."""
        if self.version == 2:
            events = self._kv("memory.events")
            peak_file = self.path / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.exists() else -1
            return {
                "limit": int((self.path / "memory.max").read_text()),
                "peak": peak,
                "limit_hits": events.get("max", 0),
                "oom_kills": events.get("oom_kill", 0),
            }
        return {
            "limit": int((self.path / "memory.limit_in_bytes").read_text()),
            "peak": int((self.path / "memory.max_usage_in_bytes").read_text()),
            "limit_hits": int((self.path / "memory.failcnt").read_text()),
            "oom_kills": self._kv("memory.oom_control").get("oom_kill", 0),
        }

    def remove(self) -> None:
        """Move any process still inside back to the parent, then delete the cgroup."""
        if not self.path.exists():
            return
        procs = self.path / "cgroup.procs"
        for pid in procs.read_text().split() if procs.exists() else []:
            try:
                (self.path.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                # A just-exited process can take a moment to leave the cgroup.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def run_child(self, code: str, args: list[str], timeout: float) -> tuple[int, str]:
        """Run ``python -c code *args`` inside this cgroup: the child imports what it needs
        (memory charged before it joins stays outside), prints "ready", and waits for a "go" line
        that comes once it has been moved in. Returns its exit status and its output; the child is
        killed if it outlives ``timeout``."""
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().strip() == "ready"
            self.add(child.pid)
            child.stdin.write("go\n")
            child.stdin.flush()
            out, _ = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        return child.returncode, out
