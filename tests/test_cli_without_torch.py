"""The torch-free commands (inspect, verify, warm, status) run in an interpreter that has no torch
at all: ``python -S`` (no site-packages, so neither torch nor numpy can be imported) with only
snapload's own package folder on the path. A keep-warm sidecar or a container start script can
then carry snapload without the 5 GB torch install (README, Install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snapload

PACKAGE_PARENT = str(Path(snapload.__file__).resolve().parent.parent)


def _bare(args: list[str], code: str = "") -> subprocess.CompletedProcess[str]:
    """Run in a fresh interpreter without site-packages; ``code`` runs before the CLI."""
    script = (
        "import sys\n"
        f"{code}\n"
        "from snapload.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
        "sys.exit(status)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = PACKAGE_PARENT
    return subprocess.run(
        [sys.executable, "-S", "-c", script, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bare") / "m.snap"
    snapload.snapshot({"w": torch.randn(64, 64), "b": torch.arange(10)}, path, metadata={"note": "x"})
    return str(path)


def test_the_bare_interpreter_really_has_no_torch() -> None:
    proc = _bare(["--version"], "import importlib.util as u; assert u.find_spec('torch') is None, 'torch is importable'")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["inspect"], "total: 2 tensors"),
        (["inspect", "--json"], '"note": "x"'),
        (["verify"], "OK "),
        (["warm"], "100% resident"),
        (["status"], "100.0% resident"),
    ],
)
def test_torch_free_commands_work_without_torch(snap: str, argv: list[str], expect: str) -> None:
    proc = _bare([*argv, snap])
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_errors_are_reported_without_torch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a snapshot at all" * 10)
    for command in ("inspect", "verify", "warm", "status"):
        proc = _bare([command, str(bad)])
        assert proc.returncode == 1, (command, proc.stderr)
        assert f"{bad}: not a snapload snapshot" in proc.stderr


@pytest.mark.parametrize("command", ["convert", "inspect", "verify", "warm", "status", "bench"])
def test_every_help_works_without_torch(command: str) -> None:
    proc = _bare([command, "--help"])
    assert proc.returncode == 0, proc.stderr


def test_the_light_api_works_without_torch(snap: str) -> None:
    code = (
        "import snapload\n"
        f"info = snapload.open({snap!r})\n"
        "assert info.names == ['w', 'b'], info.names\n"
        f"snapload.prefetch({snap!r}).wait()\n"
        f"assert snapload.residency({snap!r}).fraction == 1.0\n"
        f"snapload.evict({snap!r})\n"
    )
    proc = _bare(["--version"], code)
    assert proc.returncode == 0, proc.stderr
