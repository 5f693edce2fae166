"""The machine a benchmark ran on, without importing torch: cores, memory, kernel, CPU, the file
system holding the benchmark data, and the versions of every library under test."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("snapload", "torch", "safetensors", "tensorizer", "runai-model-streamer", "transformers", "numpy")


def _first(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() == key:
                    return v.strip()
    except OSError:
        pass
    return None


def mount_of(path: Path) -> dict[str, str]:
    """The /proc/self/mounts entry with the longest mount point that contains ``path``."""
    real = os.path.realpath(path)
    best: dict[str, str] = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fstype, opts, *_ = line.split()
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best.get("mount", "")):
                    best = {"device": dev, "mount": mnt, "fstype": fstype, "options": opts}
    except OSError:
        pass
    dev = best.get("device", "")
    if dev.startswith("/dev/"):
        base = os.path.basename(os.path.realpath(dev))
        ra = Path(f"/sys/class/block/{base}/queue/read_ahead_kb")
        if not ra.exists():  # a partition: the queue belongs to the parent disk
            ra = Path(f"/sys/class/block/{base}/../queue/read_ahead_kb")
        try:
            best["read_ahead_kb"] = ra.read_text().strip()
        except OSError:
            pass
    return best


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(repo: Path = Path(__file__).resolve().parent.parent) -> dict[str, Any]:
    """The commit the benchmark code and snapload came from, and whether tracked files differed
    from it (a dirty tree's numbers belong to no commit). Untracked files (bench data, results)
    do not count. Without git, ``SNAPLOAD_GIT_COMMIT`` (set by whoever copied the tree) is
    recorded, marked as given rather than checked."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.CalledProcessError) as e:
        # A copy of the tree without .git (the GPU machine): the caller may say which commit it is.
        given = os.environ.get("SNAPLOAD_GIT_COMMIT")
        return {"commit": given, "dirty": None, "error": f"no git: {e}", "from_env": given is not None}


def info(data_dir: Path) -> dict[str, Any]:
    mem_kb = _first("/proc/meminfo", "MemTotal")
    thp = None
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "ram_gib": round(int(mem_kb.split()[0]) / (1 << 20), 1) if mem_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "data_fs": mount_of(data_dir),
        "thp": thp,
        "gpu": os.path.exists("/dev/nvidia0"),
        "versions": versions(),
        "git": git_state(),
    }


def provenance(data_dir: Path = Path(".")) -> dict[str, Any]:
    """What every results file records beside its figures: the machine, library versions, the git
    commit and dirty flag (in ``machine``), when, and the load average at the end of the run."""
    import time

    return {
        "machine": info(data_dir),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_at_end": os.getloadavg(),
    }
