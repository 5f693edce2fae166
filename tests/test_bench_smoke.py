"""Keeps the benchmark code from rotting: the comparison worker on a tiny checkpoint, and
``snapload bench`` (snapload.bench) on a tiny snapshot. Each spawns fresh processes that import
torch, so these take several seconds; they check structure and consistency, not speed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snapload
from snapload import bench

REPO = Path(__file__).resolve().parent.parent
BENCHES = REPO / "benches"

TRIAL_FIELDS = {
    "loader": str,
    "resident_before": float,
    "usable_s": float,
    "touch_s": float,
    "total_s": float,
    "tensors": int,
    "payload_bytes": int,
    "touch_checksum": int,
    "peak_rss_mb": float,
    "minor_faults": int,
    "major_faults": int,
}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("safetensors", reason="the benchmark compares against safetensors (pip install safetensors)")
    pytest.importorskip("tensorizer", reason="the benchmark writes a tensorizer file (pip install tensorizer)")
    sys.path.insert(0, str(BENCHES))
    try:
        import checkpoints
    finally:
        sys.path.remove(str(BENCHES))
    return checkpoints.build("tiny", checkpoints.tiny_shape(), tmp_path_factory.mktemp("bench"), log=lambda _: None)


def test_worker_reports_every_field_and_loaders_agree(tiny_set: dict) -> None:
    results = {}
    for loader, fmt in (("snapload", "snapload"), ("safetensors", "safetensors")):
        path = tiny_set["paths"][fmt]
        bench.prepare_cache(path, "warm")
        results[loader] = bench.spawn_json(
            [sys.executable, str(BENCHES / "worker.py"), loader, path, "--mode", "warm"], timeout=120
        )
    for loader, row in results.items():
        for field, kind in TRIAL_FIELDS.items():
            assert isinstance(row[field], (int, float) if kind is float else kind), f"{loader}: {field}={row[field]!r}"
        assert row["loader"] == loader
        assert row["tensors"] == tiny_set["tensors"]
        assert row["payload_bytes"] == tiny_set["payload_bytes"]
        assert 0.0 <= row["resident_before"] <= 1.0
        assert row["total_s"] == pytest.approx(row["usable_s"] + row["touch_s"])
    # Same bytes in both formats, touched by the same function: the same checksum.
    assert results["snapload"]["touch_checksum"] == results["safetensors"]["touch_checksum"]
    # And the same bytes in full: every tensor hashed after the timed region.
    assert results["snapload"]["content_digest"] == results["safetensors"]["content_digest"]
    assert len(results["snapload"]["content_crcs"]) == tiny_set["tensors"]


def _benches_module(name: str):
    sys.path.insert(0, str(BENCHES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCHES))


def test_content_check_names_the_loader_and_tensor_that_differ() -> None:
    content = _benches_module("content")
    good = {"a": torch.arange(10, dtype=torch.bfloat16), "b": torch.ones(3, 4), "s": torch.tensor(7)}
    bad = {k: v.clone() for k, v in good.items()}
    bad["b"].view(-1).view(torch.uint8)[5] ^= 1  # one bit of one tensor
    rows = []
    for loader, state in (("snapload", good), ("torch", good), ("fast_but_wrong", bad)):
        crcs = content.tensor_crcs(state)
        rows.append({"loader": loader, "mode": "warm", "trial": 0, "content_crcs": crcs, "content_digest": content.digest(state, crcs)})
    assert content.mismatches(rows[:2]) == []
    (m,) = content.mismatches(rows)
    assert m["loader"] == "fast_but_wrong" and m["reference_loader"] == "snapload"
    assert m["tensors_differing"] == ["b"] and m["count_differing"] == 1
    # A dtype or shape change with the same bytes is a different result too.
    as_int = {**good, "a": good["a"].view(torch.int16)}
    assert content.digest(as_int, content.tensor_crcs(as_int)) != rows[0]["content_digest"]


def test_run_refuses_a_partial_loader_set_unless_focused(tmp_path: Path) -> None:
    run = _benches_module("run")
    with pytest.raises(SystemExit, match="re-run every loader, or pass --focused"):
        run.main(["--loaders", "snapload,safetensors", "--sizes", "0.5"])
    with pytest.raises(SystemExit, match="its own --json"):
        run.main(["--loaders", "snapload", "--focused", "--sizes", "0.5"])


@pytest.mark.slow
def test_run_on_a_tiny_checkpoint_checks_every_loader_returns_the_same_bytes(tmp_path: Path) -> None:
    """benches/run.py end to end with every loader (warm, one trial): each trial's tensors are
    hashed in full and the run compares the digests; the commit is recorded."""
    pytest.importorskip("runai_model_streamer", reason="the benchmark compares against Run:ai Model Streamer")
    out = tmp_path / "tiny.json"
    cmd = [sys.executable, str(BENCHES / "run.py"), "--tiny", "--trials", "1", "--modes", "warm", "--seed", "1"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--json", str(out), "--doc", "-", "--chart", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    (size,) = res["sizes"]
    loaders = _benches_module("loaders").LOADERS
    assert {r["loader"] for r in size["trials"]} == set(loaders)
    assert all("error" not in r for r in size["trials"]), [r.get("error") for r in size["trials"]]
    assert len({r["content_digest"] for r in size["trials"]}) == 1
    assert size["content_mismatches"] == []
    assert len(res["machine"]["git"]["commit"]) == 40 and isinstance(res["machine"]["git"]["dirty"], bool)
    assert "Same bytes from every loader" in proc.stdout


def test_touch_pages_reads_one_byte_per_page_and_skips_aliases() -> None:
    t = torch.zeros(3 * bench.PAGE + 10, dtype=torch.uint8)
    t[0], t[bench.PAGE], t[2 * bench.PAGE], t[-1] = 1, 2, 3, 4
    assert bench.touch_pages({"a": t}) == 1 + 2 + 3 + 4
    assert bench.touch_pages({"a": t, "alias": t}) == 10, "an alias is the same bytes: touched once"
    assert bench.touch_pages({"empty": torch.empty(0), "scalar": torch.tensor(7, dtype=torch.uint8)}) == 14


def _bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_snapload_bench_cold_and_warm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tiny.snap"
    state = {f"w{i}": torch.randn(64, 1024).to(torch.bfloat16) for i in range(4)}
    snapload.snapshot(state, path)
    assert bench.run(_bench_args(str(path), "--trials", "1", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["payload_bytes"] == sum(t.numel() * 2 for t in state.values())
    assert out["tensors"] == 4
    modes = {m["mode"]: m for m in out["modes"]}
    assert set(modes) == {"cold", "warm"}
    for m in modes.values():
        assert m["total_s"]["median"] >= m["usable_s"]["median"] >= 0
        assert m["gb_per_s"] > 0 and m["ceiling_gb_per_s"]["median"] > 0
        # The label must follow the measurement: a file system that ignores eviction (tmpfs)
        # yields a cold run marked as not cold, never a silent "cold".
        assert m["state_ok"] == all(bench.is_state_ok(m["mode"], t["resident_before"]) for t in m["trials"])
    table = bench.format_table(out)
    assert "cold" in table and "warm" in table and "touch all pages" in table
    assert ("NOT COLD" in table) == (not modes["cold"]["state_ok"])


def test_snapload_bench_rejects_what_is_not_a_snapshot(tmp_path: Path) -> None:
    bogus = tmp_path / "not.snap"
    bogus.write_bytes(b"definitely not a snapshot" * 100)
    with pytest.raises(snapload.SnapshotError, match="not.snap"):
        bench.run(_bench_args(str(bogus)))
    with pytest.raises(IsADirectoryError):
        bench.run(_bench_args(str(tmp_path)))
    with pytest.raises(FileNotFoundError):
        bench.run(_bench_args(str(tmp_path / "missing.snap")))
    assert bench.run(_bench_args(str(bogus), "--trials", "0")) == 2


def test_worker_script_is_importable_without_running() -> None:
    """``benches/worker.py --help`` must not import torch or any loader library."""
    proc = subprocess.run([sys.executable, str(BENCHES / "worker.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "snapload_eager" in proc.stdout


def test_coldstart_harness_on_a_tiny_model(tmp_path: Path) -> None:
    """benches/coldstart.py end to end on a 2-layer Llama: every phase timed in order, the
    prefetch progress recorded, and every variant's forward pass on the same weights."""
    pytest.importorskip("transformers", reason="the cold-start benchmark builds a transformers model")
    variants = ("st_assign", "st_assign_prefetch", "snapload", "snapload_prefetch_wait", "snapload_hf_prefetch")
    out_json = tmp_path / "coldstart.json"
    cmd = [sys.executable, str(BENCHES / "coldstart.py"), "--tiny", "--trials", "1", "--variants", ",".join(variants)]
    cmd += ["--data-dir", str(tmp_path / "data"), "--json", str(out_json), "--doc", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out_json.read_text())
    assert not res["errors"]
    assert set(res["summary"]) == set(variants)
    assert res["import_snapload"]["torch_imported"] is False
    for row in res["rows"]:
        marks = row["marks_ns"]
        order = ["spawn", "first_line", "prefetch_started", "import_torch", "import_transformers", "construct"]
        order += ["load_weights", "first_forward"]
        assert [marks[k] for k in order] == sorted(marks[k] for k in order), row["variant"]
        assert {"model.snap", "model.safetensors"} <= set(row["cold_fractions"]), "residency checked before each trial"
        assert isinstance(row["loadavg_1m"], float), "the machine's load is recorded with every trial"
        prefetched = {"snapload_prefetch_wait": "model.snap", "snapload_hf_prefetch": "model.snap"}
        prefetched["st_assign_prefetch"] = "model.safetensors"
        if row["variant"] in prefetched:
            assert 0.0 <= row["prefetched_at_imports"] <= 1.0
            weights = tmp_path / "data" / "coldstart-tiny" / prefetched[row["variant"]]
            assert row["prefetch_bytes_done"] == weights.stat().st_size
        else:
            assert row["prefetched_at_imports"] is None
    assert len({round(s["logits_probe"], 3) for s in res["summary"].values()}) == 1
    assert "| snapload + prefetch() first, wait() before restore |" in proc.stdout


def test_gpu_bench_rehearsal_on_cpu_imports_before_the_clock(tmp_path: Path) -> None:
    """benches/gpu_bench.py --device cpu on toy dimensions: the same script the GPU machine runs.
    Every loader's libraries are imported before the clock, and each row says how many trials it
    is the median of."""
    pytest.importorskip("safetensors", reason="the GPU benchmark compares against safetensors (pip install safetensors)")
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(BENCHES / "gpu_bench.py"), "--device", "cpu", "--tiny", "--size-gb", "0.01", "--trials", "2"]
    cmd += ["--dir", str(tmp_path / "data"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = [r for r in res["results"] if "seconds" in r]
    assert {r["loader"] for r in rows} == {"snapload", "safetensors", "torch-mmap"}
    for r in rows:
        late = [m for m in r["imported_during_load"] if m.split(".")[0] in ("snapload", "safetensors")]
        assert late == [], f"{r['loader']} imported {late} inside the clock"
    assert proc.stdout.count("| 2 of 2 |") == 6, proc.stdout
    assert len(res["machine"]["git"]["commit"]) == 40


def test_gpu_bench_table_counts_the_trials_the_budget_let_run() -> None:
    gpu_bench = _benches_module("gpu_bench")
    row = {"bytes": 10**9, "rss_peak": 0, "rss_before": 0, "resident_fraction": 0.0}
    results = [
        {**row, "loader": "snapload", "state": "warm", "trial": 0, "seconds": 1.0},
        {**row, "loader": "snapload", "state": "warm", "trial": 1, "seconds": 2.0},
        {**row, "loader": "safetensors", "state": "warm", "trial": 0, "seconds": 3.0},
        {"loader": "safetensors", "state": "warm", "trial": 1, "skipped": "budget spent"},
    ]
    args = argparse.Namespace(device="cuda", trials=2)
    table = gpu_bench.summarize(results, {"pinned_h2d_gbps": 50.0, "direct_read_gbps": 5.0}, 10**9, args)
    assert "| warm | snapload | 2 of 2 | 1.500 |" in table
    assert "| warm | safetensors | 1 of 2 | 3.000 |" in table
    assert "1 trial(s) skipped when the time budget ran out" in table


def test_results_record_the_commit_or_say_who_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = _benches_module("machine")
    here = machine.git_state()
    assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)
    monkeypatch.setenv("SNAPLOAD_GIT_COMMIT", "f" * 40)
    copied = machine.git_state(tmp_path)  # a copy of the tree without .git, as on the GPU machine
    assert copied["commit"] == "f" * 40 and copied["from_env"] is True and copied["dirty"] is None
    report = _benches_module("report")
    assert "given by SNAPLOAD_GIT_COMMIT" in report.format_git(copied)
    monkeypatch.delenv("SNAPLOAD_GIT_COMMIT")
    assert machine.git_state(tmp_path)["commit"] is None
    assert "not recorded" in report.format_git(machine.git_state(tmp_path))
