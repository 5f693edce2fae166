"""The README's torch-free install, done literally: ``maturin build --release``, a fresh venv,
``pip install --no-deps`` of that wheel, and then what the README promises works there
(``snapload inspect / verify / warm / status`` from the installed console script, ``import
snapload``, ``open``, ``prefetch``, ``residency``, ``evict``), while ``restore`` fails clearly.

tests/test_cli_without_torch.py runs the same commands from the source tree in ``python -S``; this
one checks what a user actually gets: the wheel's contents (native module, stubs, ``py.typed``,
entry points) and an interpreter in which torch and numpy are not installed at all.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import snapload

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env, **kw)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The dev venv has maturin (scripts/setup.sh builds with it); the Rust build outputs are
    # shared with that build through CARGO_TARGET_DIR, so this mostly packages.
    proc = _run([sys.executable, "-m", "maturin", "build", "--release", "--out", str(out)], timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    wheels = list(out.glob("snapload-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def bare(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with only the wheel, installed without its dependencies."""
    root = tmp_path_factory.mktemp("venv")
    proc = _run([sys.executable, "-m", "venv", str(root)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = _run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("snap") / "m.snap"
    snapload.snapshot({"w": torch.randn(64, 64), "b": torch.arange(10)}, path, metadata={"note": "x"})
    return str(path)


def test_the_wheel_carries_the_native_module_stubs_and_entry_points(wheel: Path) -> None:
    assert "abi3" in wheel.name, wheel.name  # one wheel for every CPython >= 3.11
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for needed in ("snapload/_native.abi3.so", "snapload/py.typed", "snapload/_native.pyi", "snapload/cli.py", "snapload/integrations/vllm.py"):
        assert needed in names, (needed, names)
    groups = configparser.ConfigParser(delimiters=("=",))
    groups.read_string(entry_points)
    assert groups["console_scripts"]["snapload"].strip() == "snapload.cli:main"
    assert groups["vllm.general_plugins"]["snapload"].strip() == "snapload.integrations.vllm:register"
    assert "Requires-Dist: torch" in metadata  # a plain install brings torch; --no-deps is the opt-out


def test_the_fresh_venv_really_has_neither_torch_nor_numpy(bare: Path) -> None:
    code = "import importlib.util as u; assert u.find_spec('torch') is None and u.find_spec('numpy') is None"
    proc = _run([str(bare / "bin" / "python"), "-c", code], timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["inspect"], "total: 2 tensors"),
        (["verify"], "OK "),
        (["warm"], "100% resident"),
        (["status"], "100.0% resident"),
    ],
)
def test_the_installed_console_script_works_without_torch(bare: Path, snap: str, argv: list[str], expect: str) -> None:
    proc = _run([str(bare / "bin" / "snapload"), *argv, snap], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_a_bad_file_is_reported_by_the_installed_script(bare: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a snapshot at all" * 10)
    proc = _run([str(bare / "bin" / "snapload"), "verify", str(bad)], timeout=120)
    assert proc.returncode == 1
    assert f"{bad}: not a snapload snapshot" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_light_api_works_and_restore_says_what_is_missing(bare: Path, snap: str) -> None:
    code = (
        "import sys, snapload\n"
        f"info = snapload.open({snap!r})\n"
        "assert info.names == ['w', 'b'], info.names\n"
        f"snapload.prefetch({snap!r}).wait()\n"
        f"assert snapload.residency({snap!r}).fraction == 1.0\n"
        f"snapload.evict({snap!r})\n"
        "try:\n"
        f"    snapload.restore({snap!r})\n"
        "except ModuleNotFoundError as e:\n"
        "    assert e.name == 'torch' and 'snapload.restore needs torch' in str(e), e\n"
        "    print('restore:', e)\n"
        "else:\n"
        "    raise AssertionError('restore worked without torch')\n"
    )
    proc = _run([str(bare / "bin" / "python"), "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "restore:" in proc.stdout
