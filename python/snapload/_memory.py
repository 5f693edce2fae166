"""How much memory this process can still fill with file pages without pushing out its own.

``/proc/meminfo``'s ``MemAvailable`` speaks for the whole machine; a serverless container is
usually capped far below that by its memory cgroup, and there a file larger than the cap would
only be read in to be evicted again (or, for anonymous memory, get the process OOM-killed). So the
room is the least of ``MemAvailable`` and, for the process's memory cgroup and each cgroup above
it, the limit less the memory it holds that cannot be reclaimed (usage less file cache).

cgroup v1 and v2 are both read: hybrid hierarchies (v1 memory controller) are still common, this
machine's included. Hand-written because the stdlib has nothing and psutil reports only the
machine-wide figures. Anything unreadable counts as "no limit here", never as an error: this only
steers a performance choice.
"""

from __future__ import annotations

import os

__all__ = ["available_bytes", "cgroup_room_bytes", "mounts", "own_cgroups"]

# v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no limit either.
_UNLIMITED = 1 << 60


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _stat_value(path: str, keys: tuple[str, ...]) -> int:
    """The first of ``keys`` found in a ``memory.stat`` file, else 0."""
    try:
        with open(path) as f:
            stats = dict(line.split(None, 1) for line in f if " " in line)
    except (OSError, ValueError):
        return 0
    for key in keys:
        if key in stats:
            try:
                return int(stats[key])
            except ValueError:
                return 0
    return 0


def own_cgroups() -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller, or "" for the v2 line: path}."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def mounts() -> list[tuple[str, str, list[str]]]:
    """``/proc/self/mounts`` as (mount point, file system type, options)."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, fstype, opts, *_ = line.split()
            out.append((mnt, fstype, opts.split(",")))
    return out


def _memory_cgroup_dirs() -> list[tuple[str, int]]:
    """This process's memory cgroup directory and each one above it up to the mount, with the
    cgroup version; empty where none is mounted or readable."""
    try:
        own, mounted = own_cgroups(), mounts()
    except (OSError, ValueError):
        return []
    for mnt, fstype, opts in mounted:
        if fstype == "cgroup" and "memory" in opts and "memory" in own:
            return [(d, 1) for d in _up_to(mnt, own["memory"])]
    for mnt, fstype, _opts in mounted:
        if fstype == "cgroup2" and "" in own:
            return [(d, 2) for d in _up_to(mnt, own[""])]
    return []


def _up_to(mount: str, path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return [os.path.join(mount, *parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_room_bytes() -> int | None:
    """The least room under any memory cgroup limit over this process, or None if none is set."""
    room: int | None = None
    for directory, version in _memory_cgroup_dirs():
        if version == 2:
            limit = _read_int(os.path.join(directory, "memory.max"))
            usage = _read_int(os.path.join(directory, "memory.current"))
            cache = _stat_value(os.path.join(directory, "memory.stat"), ("file",))
        else:
            limit = _read_int(os.path.join(directory, "memory.limit_in_bytes"))
            usage = _read_int(os.path.join(directory, "memory.usage_in_bytes"))
            cache = _stat_value(os.path.join(directory, "memory.stat"), ("total_cache", "cache"))
        if limit is None:
            continue
        held = max(0, (usage or 0) - cache)
        here = max(0, limit - held)
        room = here if room is None else min(room, here)
    return room


def available_bytes() -> int | None:
    """The least of the machine's ``MemAvailable`` and the room under the memory cgroups, or None
    when neither can be read."""
    machine: int | None
    try:
        with open("/proc/meminfo") as f:
            machine = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        machine = None
    room = cgroup_room_bytes()
    if machine is None:
        return room
    return machine if room is None else min(machine, room)
