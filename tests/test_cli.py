"""The snapload command line: convert, inspect, verify; exit statuses and messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import snapload
from snapload import cli
from snapload._progress import ProgressBar, format_bytes


@pytest.fixture
def snap(tmp_path: Path) -> Path:
    emb = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    sd = {"emb": emb, "head": emb, "b": torch.arange(1000, dtype=torch.int64)}
    path = tmp_path / "m.snap"
    snapload.snapshot(sd, path, metadata={"hf.config": json.dumps({"x": list(range(100))}), "note": "hi"})
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_inspect_text(snap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["inspect", str(snap)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{snap}: snapshot v1, alignment 4096")
    row = next(ln for ln in lines if ln.startswith("b "))
    assert row.split() == ["b", "int64", "[1000]", "8.0", "kB", str(snapload.open(snap).tensors[2].offset)]
    assert "alias of emb" in next(ln for ln in lines if ln.startswith("head "))
    assert "  note: hi" in lines
    assert any(ln.startswith("  hf.config: {") and "--json shows all" in ln for ln in lines)
    assert lines[-1] == f"total: 3 tensors (1 alias), {format_bytes(8 * 8 * 4 + 8000)} of tensor data"


def test_inspect_json(snap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", "--json", str(snap)], capsys)
    assert code == 0
    d = json.loads(out)
    info = snapload.open(snap)
    assert d["file_size"] == info.file_size and d["data_bytes"] == info.data_bytes == 8256
    assert [t["name"] for t in d["tensors"]] == ["emb", "head", "b"]
    head = d["tensors"][1]
    assert head["alias_of"] == "emb" and head["shape"] == [8, 8] and head["dtype"] == "float32"
    assert d["tensors"][2]["crc32c"] == f"{info.tensors[2].crc32c:08x}"
    assert json.loads(d["metadata"]["hf.config"]) == {"x": list(range(100))}


def test_verify_ok(snap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["verify", str(snap)], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"OK {snap}: 3 tensors,") and "GB/s" in out


def test_verify_detects_a_flipped_byte(snap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = next(t for t in snapload.open(snap).tensors if t.name == "b")
    with open(snap, "r+b") as f:
        f.seek(b.offset + 100)
        byte = f.read(1)
        f.seek(b.offset + 100)
        f.write(bytes([byte[0] ^ 0x10]))
    code, out, err = run(["verify", str(snap)], capsys)
    assert code == 1 and out == ""
    assert "checksum mismatch" in err and '"b"' in err and str(snap) in err


def test_missing_and_wrong_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("inspect", "verify"):
        code, _, err = run([command, str(tmp_path / "absent.snap")], capsys)
        assert code == 2 and "absent.snap" in err and "No such file" in err
        code, _, err = run([command, str(tmp_path)], capsys)
        assert code == 2 and "is a directory" in err
    (tmp_path / "junk.snap").write_bytes(b"not a snapshot at all" * 10)
    code, _, err = run(["verify", str(tmp_path / "junk.snap")], capsys)
    assert code == 1 and "not a snapload snapshot" in err
    code, _, err = run(["convert", str(tmp_path / "absent.pt"), str(tmp_path / "o.snap")], capsys)
    assert code == 2 and "absent.pt" in err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([], capsys)[0] == 2
    assert run(["convert", "only-one-arg"], capsys)[0] == 2
    assert run(["convert", "a", "b", "--dtype", "int8"], capsys)[0] == 2
    assert run(["--help"], capsys)[0] == 0
    src = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3)}, src)
    code, _, err = run(["convert", str(src), str(tmp_path / "o.snap"), "--alignment", "100"], capsys)
    assert code == 2 and "alignment 100" in err
    assert not (tmp_path / "o.snap").exists()


def test_convert_end_to_end_as_a_program(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    tensors = {"w": torch.randn(16, 16), "ids": torch.arange(7, dtype=torch.int32)}
    save_file(tensors, src)
    dst = tmp_path / "m.snap"
    proc = subprocess.run(
        [sys.executable, "-m", "snapload.cli", "convert", str(src), str(dst), "--dtype", "bfloat16"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # stderr is not a terminal: no progress bar
    assert proc.stdout.startswith(f"converted {src} -> {dst}: 2 tensors, ") and "GB/s" in proc.stdout
    restored = snapload.restore(dst, verify=True)
    assert torch.equal(restored["w"], tensors["w"].bfloat16())
    assert torch.equal(restored["ids"], tensors["ids"])


def test_convert_refuses_pickle_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.ones(1), "evil": Evil()}, tmp_path / "evil.pt")
    code, _, err = run(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "o.snap")], capsys)
    assert code == 1 and "evil.pt: refused to load" in err
    assert not marker.exists()


def test_convert_reports_skipped_entries_as_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "c.pt")
    code, out, err = run(["convert", str(tmp_path / "c.pt"), str(tmp_path / "c.snap")], capsys)
    assert code == 0 and ": 1 tensor," in out
    assert err.startswith("snapload: warning: ") and "step (int)" in err


def test_progress_bar_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar("converting ", stream)
        bar(0, 2 << 20)
        bar(2 << 20, 2 << 20)
        bar.close()
    assert pipe.getvalue() == ""
    assert tty.getvalue().startswith("\rconverting [") and "100% 2.1 MB / 2.1 MB" in tty.getvalue()
    assert tty.getvalue().endswith("\n")


def register_hello(subparsers: Any) -> None:
    p = subparsers.add_parser("hello")
    p.add_argument("--fail", action="store_true")

    def handler(args: Any) -> int:
        if args.fail:
            raise snapload.CorruptHeaderError("x.snap: corrupt header: testing")
        print("hello")
        return 0

    p.set_defaults(handler=handler)


def test_other_modules_can_add_commands(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, f"{__name__}:register_hello"))
    assert run(["hello"], capsys) == (0, "hello\n", "")
    code, _, err = run(["hello", "--fail"], capsys)
    assert code == 1 and err == "snapload: error: x.snap: corrupt header: testing\n"


# ------------------------------------------------------------------------------------------------
# Help texts, units and argument checks


def _subparsers() -> dict[str, Any]:
    import argparse

    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_help_has_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _subparsers()
    assert set(commands) >= {"convert", "inspect", "verify", "warm", "status", "bench"}
    for name, sub in commands.items():
        assert sub.description and len(sub.description) > 40, name
        code, out, _ = run([name, "--help"], capsys)
        assert code == 0 and " ".join(sub.description.split()[:4]) in " ".join(out.split()), name


def test_bench_populate_offers_auto_and_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from snapload import _restore, bench

    assert bench.POPULATE_MODES == _restore.POPULATE_MODES  # bench cannot import _restore (torch)
    code, out, _ = run(["bench", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0 and "{auto,none,background,sync}" in flat and "(default: none)" in flat


def test_warm_threads_must_be_at_least_one(snap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-3", "x"):
        code, out, err = run(["warm", str(snap), "--threads", bad], capsys)
        assert code == 2 and out == "" and "--threads" in err, bad
    code, out, _ = run(["warm", "--help"], capsys)
    assert "at least 1 (default 4)" in " ".join(out.split())
    assert run(["warm", str(snap), "--threads", "1"], capsys)[0] == 0


def test_sizes_and_rates_use_one_decimal_unit_system() -> None:
    assert format_bytes(999) == "999 B"
    assert format_bytes(1500) == "1.5 kB"
    assert format_bytes(2_500_000_000) == "2.5 GB"
    from snapload._progress import format_rate

    assert format_rate(2_000_000_000, 1.0) == "2.00 GB/s"


def test_bench_table_says_what_it_compares_against() -> None:
    from snapload import bench

    def mode(name: str, gbps: float, pread: float) -> dict[str, Any]:
        r = {"median": 0.1, "min": 0.1, "max": 0.1}
        return {
            "mode": name, "eager": False, "populate": "none", "state_ok": True,
            "resident_before": {"median": 0.0 if name == "cold" else 1.0}, "usable_s": r, "touch_s": r,
            "total_s": r, "gb_per_s": gbps, "ceiling_gb_per_s": {"median": pread}, "peak_rss_mb": 500.0,
        }

    table = bench.format_table(
        {"path": "m.snap", "payload_bytes": 10**9, "tensors": 3, "trials": 1,
         "modes": [mode("cold", 0.9, 1.8), mode("warm", 20.0, 8.8)]}
    )
    assert "ceiling" not in table.splitlines()[2]  # the column header names what was measured
    header = table.splitlines()[2].split()
    assert "pread" in header and "vs" in header
    warm = next(line for line in table.splitlines() if line.startswith("warm"))
    assert "227%" in warm  # a warm restore beats a copy out of the page cache; the note says why
    assert "which a restore that maps the file never makes" in table
    assert "GB = 10^9 bytes" in table and "1.000 GB" in table
